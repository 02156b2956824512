"""Mining: grouping by normalised input, thresholds, prompt-hash scoping."""

from __future__ import annotations

from engine import load_workflow, run_workflow
from engine.promotion.mining import mine_step


def _mine(path, store):
    wf = load_workflow(path)
    return mine_step(store, wf.name, "classify", wf.step("classify").llm)


def test_groups_by_normalised_input_with_thresholds(label_wf, labeller, store):
    path = label_wf()
    for text in ["Hello", "hello ", "  HELLO", "banana split", "banana split", "tiny"]:
        run_workflow(path, {"text": text})
    log = _mine(path, store)
    assert log.executions == 6
    hello = log.groups['{"text":"hello"}']
    assert (hello.calls, hello.distinct_outputs, hello.agreement) == (3, 1, 1.0)
    assert hello.tokens_in > 0 and hello.first_seen <= hello.last_seen
    policy = load_workflow(path).step("classify").llm.promote
    assert [g.key for g in log.candidates(policy)] == ['{"text":"hello"}']  # banana: 2 calls < 3


def test_agreement_threshold_and_per_step_settings(label_wf, fake, store):
    """Agreement thresholds of `evidence: any` (with trusted evidence, disagreeing answers are a conflict)."""
    path = label_wf(", evidence: any")
    fake.enqueue(*[{"label": "short"}] * 19, {"label": "long"})
    for _ in range(20):
        run_workflow(path, {"text": "flip"})
    log = _mine(path, store)
    group = log.groups['{"text":"flip"}']
    assert (group.calls, group.distinct_outputs, group.agreement) == (20, 2, 0.95)
    assert log.candidates(load_workflow(path).step("classify").llm.promote)  # 0.95 >= 0.95
    assert not _mine(label_wf(), store).candidates(load_workflow(label_wf()).step("classify").llm.promote)
    strict = label_wf(", evidence: any, min_agreement: 0.99, min_calls: 2")
    assert not _mine(strict, store).candidates(load_workflow(strict).step("classify").llm.promote)


def test_only_calls_under_the_current_prompt_and_schema_count(label_wf, project, labeller, store):
    path = label_wf()
    for _ in range(3):
        run_workflow(path, {"text": "hello"})
    changed = project(path.read_text().replace("Label this:", "Label this text:"), name="v2.yaml")
    labeller.responder = lambda r: {"label": "short"}
    run_workflow(changed, {"text": "hello"})
    log = _mine(changed, store)
    assert log.executions == 1 and log.stale_calls == 3
    assert log.groups['{"text":"hello"}'].calls == 1
    assert not log.candidates(load_workflow(changed).step("classify").llm.promote)
    for _ in range(2):
        run_workflow(path, {"text": "hello"})  # back to the old prompt: its group spans the change
    old = _mine(path, store)
    assert old.groups['{"text":"hello"}'].calls == 5
    assert old.groups['{"text":"hello"}'].prompt_changed
