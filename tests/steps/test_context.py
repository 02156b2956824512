"""Long inputs: `context: {max_input_tokens, strategy: truncate | chunk, reduce}`."""

from __future__ import annotations

import logging

import pytest

from engine import SpecError, StepError, load_workflow, run_workflow
from engine.config import load_config
from engine.runner import open_store
from engine.steps.context import split_text
from engine.tokens import approximate_count

CONFIG = """
tiers:
  local:
    - model: fake:small
      options: {context_window: 400}
"""
WF = """\
name: long
inputs:
  doc: {type: string}
steps:
  - id: summary
    inputs: {text: "{{ inputs.doc }}"}
    llm:
      prompt: "Summarise: {{ text }}"
      schema: {type: object, properties: {summary: {type: string}}, required: [summary]}
      max_tokens: 40
      context:
        strategy: chunk
        max_input_tokens: 60
        reduce:
          prompt: "Combine: {{ results | map(attribute='summary') | join(' / ') }}"
"""


def paragraph(n: int, words: int = 30) -> str:
    return " ".join(f"p{n}w{i}" for i in range(words)) + "."


def responder(request):
    prompt = request.messages[-1]["content"]
    if prompt.startswith("Combine: "):
        return {"summary": "C(" + prompt.removeprefix("Combine: ") + ")"}
    text = prompt.removeprefix("Summarise: ")
    return {"summary": text.split()[0] + ".." + text.split()[-1]}


def test_short_input_goes_out_as_is(project, fake):
    fake.responder = responder
    wf = project(WF, config=CONFIG)
    result = run_workflow(wf, {"doc": "short text."})
    assert result.outputs == {"summary": {"summary": "short..text."}}
    info = result.step("summary").context
    assert info["chunks"] == 0 and not info["truncated"] and info["exact"] is False
    assert info["counting"].startswith("approximate")
    assert len(fake.requests) == 1


def test_chunk_runs_the_step_per_chunk_then_reduces(project, fake):
    fake.responder = responder
    wf = project(WF, config=CONFIG)
    doc = "\n\n".join(paragraph(i) for i in range(4))  # ~4 x 48 tokens: one paragraph per chunk at 60
    result = run_workflow(wf, {"doc": doc})
    chunk_calls = [r for r in fake.requests if r.messages[-1]["content"].startswith("Summarise: ")]
    # chunks run concurrently: each is sent exactly once, in whatever order they reach the provider
    assert sorted(r.messages[-1]["content"].removeprefix("Summarise: ") for r in chunk_calls) == sorted(
        paragraph(i) for i in range(4))
    for r in chunk_calls:
        assert approximate_count(r.messages[-1]["content"].removeprefix("Summarise: ")) <= 60
    summary = result.outputs["summary"]["summary"]
    assert summary == "C(" + " / ".join(f"p{i}w0..p{i}w29." for i in range(4)) + ")"
    record = result.step("summary")
    assert record.context["chunks"] == 4 and record.context["reduce_rounds"] == 1
    assert record.attempts == 5
    calls = open_store(load_config().store_path()).run(result.run_id)["llm_calls"]
    assert sorted(c["step_id"] for c in calls) == ["summary"] * 4 + ["summary.reduce"]


def test_results_that_do_not_fit_one_reduce_are_reduced_in_a_tree(project, fake):
    def short_responder(request):
        prompt = request.messages[-1]["content"]
        if prompt.startswith("Combine: "):
            parts = prompt.removeprefix("Combine: ").split(" / ")
            return {"summary": f"{parts[0].split('-')[0]}-{parts[-1].split('-')[-1]}"}
        words = prompt.removeprefix("Summarise: ").split()
        return {"summary": f"{words[0]}-{words[-4]}"}

    fake.responder = short_responder
    wf = project(WF.replace("max_input_tokens: 60", "max_input_tokens: 15").replace(
        "max_tokens: 40", "max_tokens: 40\n      retries: 0"), config=CONFIG.replace("400", "140"))
    doc = "\n\n".join(" ".join(f"s{p}x{i} is a sentence." for i in range(6)) for p in range(6))
    result = run_workflow(wf, {"doc": doc})
    record = result.step("summary")
    assert record.context["chunks"] >= 6 and record.context["reduce_rounds"] >= 2
    assert result.outputs["summary"]["summary"] == "s0x0-s5x5"  # first and last sentence survive every round
    reduce_calls = [r for r in fake.requests if r.messages[-1]["content"].startswith("Combine: ")]
    assert len(reduce_calls) >= 3


def test_chunks_split_on_paragraphs_then_sentences():
    text = "One two. Three four five.\n\nSix seven eight nine ten eleven. Twelve.\n\n\nThirteen."
    count = lambda t: len(t.split())  # noqa: E731
    chunks = split_text(text, 6, count)
    assert chunks == ["One two. Three four five.", "Six seven eight nine ten eleven.", "Twelve.\n\nThirteen."]
    assert all(count(c) <= 6 for c in chunks)
    with pytest.raises(StepError, match="a sentence of 6 tokens is longer than the 5-token chunk budget"):
        split_text(text, 5, count)


def test_truncate_is_logged_never_silent(project, fake, caplog):
    fake.responder = responder
    wf = project(WF.replace("strategy: chunk", "strategy: truncate").split("        reduce:")[0], config=CONFIG)
    doc = "\n\n".join(paragraph(i) for i in range(4))
    with caplog.at_level(logging.WARNING, logger="engine.context"):
        result = run_workflow(wf, {"doc": doc})
    sent = fake.requests[0].messages[-1]["content"].removeprefix("Summarise: ")
    assert doc.startswith(sent) and len(sent) < len(doc)
    assert approximate_count(sent) <= 60
    info = result.step("summary").context
    assert info["truncated"] and info["kept_tokens"] <= 60 and info["tokens"] == approximate_count(doc)
    assert any("truncated from" in r.getMessage() for r in caplog.records)


def test_default_budget_comes_from_the_window_minus_cap_and_prefix(project, fake):
    fake.responder = responder
    wf = project(WF.replace("        max_input_tokens: 60\n", ""), config=CONFIG)
    doc = "\n\n".join(paragraph(i, 60) for i in range(6))
    result = run_workflow(wf, {"doc": doc})
    n = result.step("summary").context["max_input_tokens"]
    assert 0 < n < 400 - 40
    for r in fake.requests:
        total = sum(approximate_count(m["content"]) for m in r.messages)
        assert total + 40 <= 400


def test_an_input_that_still_does_not_fit_is_a_step_error(project, fake):
    fake.responder = responder
    wf = project(WF.replace("max_input_tokens: 60", "max_input_tokens: 5000"), config=CONFIG)
    doc = "\n\n".join(paragraph(i, 200) for i in range(3))
    result = run_workflow(wf, {"doc": doc}, raise_on_error=False)
    assert result.status == "failed" and "still does not fit tier 'local'" in result.error
    assert fake.requests == []
    wf = project(WF, config=CONFIG)
    result = run_workflow(wf, {"doc": " ".join(["word"] * 400)}, raise_on_error=False)
    assert "is longer than the 60-token chunk budget" in result.error and "not cut mid-sentence" in result.error


@pytest.mark.parametrize("change, fragment, field", [
    (("strategy: chunk", "strategy: squeeze"), "'truncate' or 'chunk'", "steps[0](summary).llm.context.strategy"),
    (("strategy: chunk", "strategy: truncate"), "reduce only applies with strategy: chunk",
     "steps[0](summary).llm.context.reduce"),
    (("        max_input_tokens: 60\n", "        max_input_tokens: 60\n        input: body\n"),
     "unknown step input 'body'", "steps[0](summary).llm.context.input"),
    (('inputs: {text: "{{ inputs.doc }}"}', 'inputs: {text: "{{ inputs.doc }}", style: short}'),
     "name the input to chunk with `input:`", "steps[0](summary).llm.context"),
    (("Combine: {{ results", "Combine {{ text }}: {{ results"), "undeclared variable(s) text",
     "steps[0](summary).llm.context.reduce.prompt"),
    (("max_input_tokens: 60", "max_input_tokens: 0"), "greater than 0", "steps[0](summary).llm.context.max_input_tokens"),
])
def test_context_load_checks(project, change, fragment, field):
    text = WF.replace(*change)
    assert text != WF
    wf = project(text, config=CONFIG)
    with pytest.raises(SpecError) as info:
        load_workflow(wf)
    hits = [p for p in info.value.problems if fragment in p[2]]
    assert hits, info.value.problems
    assert hits[0][1] == field and hits[0][0].startswith(f"{wf}:")


@pytest.mark.model
def test_local_tier_counts_exactly_with_llama_cpp():
    from engine.providers.registry import get_provider
    from engine.spec.models import ModelEntry
    from engine.tokens import counter_for

    entry = ModelEntry(model="llamacpp:smollm2", options={"n_ctx": 512})
    counter = counter_for(entry)
    text = "Tokenizers split text into pieces; llama.cpp's does it exactly like the model. " * 20
    llama = get_provider("llamacpp").load("smollm2", {"n_ctx": 512}).llama
    assert counter.exact and "llama.cpp" in counter.how and counter.context_window == 512
    assert counter.count(text) == len(llama.tokenize(text.encode(), add_bos=False, special=False))
    assert counter.count(text) != approximate_count(text)
    head = counter.cut(text, 37)
    assert text.startswith(head) and counter.count(head) <= 37 and counter.count(head) >= 30


LOCAL_WF = """\
name: long_local
inputs:
  doc: {type: string}
steps:
  - id: topic
    inputs: {text: "{{ inputs.doc }}"}
    llm:
      prompt: "What is this text about? {{ text }}"
      schema: {type: object, properties: {topic: {enum: [bridges, taxes, weather]}}, required: [topic]}
      max_tokens: 12
      retries: 0
      context:
        strategy: chunk
        reduce:
          prompt: "Topics of the parts: {{ results | map(attribute='topic') | join(', ') }}. The main topic?"
"""


@pytest.mark.model
def test_long_document_chunked_on_the_local_tier(project):
    config = "tiers:\n  local:\n    - model: llamacpp:smollm2\n      options: {n_ctx: 512}\n"
    wf = project(LOCAL_WF, config=config)
    doc = "\n\n".join(f"Section {i}. The river town of Aldmere built bridge number {i} in spring. "
                      "Its council paid for the bridge with a tax on grain. " * 5 for i in range(3))
    result = run_workflow(wf, {"doc": doc}, raise_on_error=False)
    record = result.step("topic")
    assert result.ok, result.error
    assert record.context["exact"] is True and record.context["chunks"] >= 2, record.context
    n = record.context["max_input_tokens"]
    assert record.context["tokens"] > n and n < 512 - 12
    assert result.outputs["topic"]["topic"] in ("bridges", "taxes", "weather")
    # every call fit the window: no context-overflow errors anywhere
    assert not any("context" in (c.get("error") or "") for c in record.calls), record.calls
