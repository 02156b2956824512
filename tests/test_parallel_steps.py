"""Independent steps run at the same time; results and the log match a sequential run."""

from __future__ import annotations

import asyncio
import json
import threading


from engine import arun_workflow, run_workflow
from engine.config import load_config
from engine.runner import open_store

WF = """\
name: digest
inputs:
  text: {type: string}
steps:
  - id: clean
    inputs: {text: "{{ inputs.text }}"}
    script: ops.py:strip
  - id: sentiment
    inputs: {text: "{{ steps.clean.output }}"}
    llm:
      prompt: "Sentiment: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 10
  - id: summary
    inputs: {text: "{{ steps.clean.output }}"}
    llm:
      prompt: "Summary: {{ text }}"
      schema: {type: object, properties: {summary: {type: string}}, required: [summary]}
      max_tokens: 10
  - id: join
    inputs: {a: "{{ steps.sentiment.output.label }}", b: "{{ steps.summary.output.summary }}"}
    script: ops.py:join
outputs:
  both: "{{ steps.join.output }}"
"""
OPS = {"ops.py": "def strip(text):\n    return text.strip()\n\ndef join(a, b):\n    return a + '|' + b\n"}


def barrier_responder(parties: int):
    """Answers only once `parties` calls are in flight together: a sequential run times out."""
    barrier = threading.Barrier(parties, timeout=5)

    def respond(request):
        barrier.wait()
        prompt = request.messages[-1]["content"]
        return {"label": "praise"} if prompt.startswith("Sentiment") else {"summary": "short"}
    return respond


def test_independent_llm_steps_overlap_on_threads(project, fake):
    fake.responder = barrier_responder(2)
    wf = project(WF, files=OPS)
    result = run_workflow(wf, {"text": " great phone "})
    assert result.outputs == {"both": "praise|short"}
    assert [s.step_id for s in result.steps] == ["clean", "sentiment", "summary", "join"]


def test_independent_llm_steps_overlap_on_the_event_loop(project, fake):
    fake.responder = barrier_responder(2)
    wf = project(WF, files=OPS)
    result = asyncio.run(arun_workflow(wf, {"text": " great phone "}))
    assert result.outputs == {"both": "praise|short"}


def test_sequential_run_does_not_overlap(project, fake):
    active, peak, lock = [0], [0], threading.Lock()

    def respond(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.05)
        with lock:
            active[0] -= 1
        prompt = request.messages[-1]["content"]
        return {"label": "praise"} if prompt.startswith("Sentiment") else {"summary": "short"}

    fake.responder = respond
    wf = project(WF, files=OPS)
    run_workflow(wf, {"text": "x"}, parallel=False)
    assert peak[0] == 1
    run_workflow(wf, {"text": "x"})
    assert peak[0] == 2


def _strip_volatile(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in ("latency_ms", "started")}
    out["calls"] = [{k: v for k, v in c.items() if k != "latency_ms"} for c in record["calls"]]
    return out


def test_results_and_log_identical_to_a_sequential_run(project, fake):
    def respond(request):
        prompt = request.messages[-1]["content"]
        threading.Event().wait(0.02 if prompt.startswith("Sentiment") else 0.0)  # summary finishes first
        return {"label": "praise"} if prompt.startswith("Sentiment") else {"summary": "short"}

    fake.responder = respond
    wf = project(WF, files=OPS)
    parallel = run_workflow(wf, {"text": "ok"})
    sequential = run_workflow(wf, {"text": "ok"}, parallel=False)
    assert parallel.outputs == sequential.outputs
    assert ([_strip_volatile(s.__dict__) for s in parallel.steps]
            == [_strip_volatile(s.__dict__) for s in sequential.steps])
    store = open_store(load_config().store_path())
    rows = [store.run(r.run_id) for r in (parallel, sequential)]
    keep = ("step_id", "kind", "status", "served_by", "tier", "model", "attempts", "tokens_in", "tokens_out",
            "cost", "output", "error")
    assert [{k: s[k] for k in keep} for s in rows[0]["steps"]] == [{k: s[k] for k in keep} for s in rows[1]["steps"]]
    assert [s["step_id"] for s in rows[0]["steps"]] == ["clean", "sentiment", "summary", "join"]
    calls = [sorted(json.dumps({k: c[k] for k in ("step_id", "input", "output", "cost", "outcome")}, sort_keys=True)
                    for c in r["llm_calls"]) for r in rows]
    assert calls[0] == calls[1]


def test_forward_references_run_in_dependency_order(project, fake):
    fake.responder = lambda request: {"label": "x"}
    wf = project("""\
        name: fwd
        inputs: {text: {type: string}}
        steps:
          - id: last
            inputs: {text: "{{ steps.first.output }}"}
            script: ops.py:strip
          - id: first
            inputs: {text: "{{ inputs.text }}"}
            script: ops.py:strip
        outputs: {out: "{{ steps.last.output }}"}
        """, files=OPS)
    for parallel in (True, False):
        result = run_workflow(wf, {"text": " hi "}, parallel=parallel)
        assert result.outputs == {"out": "hi"}
        assert [s.step_id for s in result.steps] == ["last", "first"]  # records keep the file's order


def test_a_failed_step_stops_the_steps_that_read_it(project, fake):
    def respond(request):
        if request.messages[-1]["content"].startswith("Sentiment"):
            return "nope"
        return {"summary": "short"}

    fake.responder = respond
    wf = project(WF, files=OPS)
    result = run_workflow(wf, {"text": "x"}, raise_on_error=False)
    assert result.status == "failed" and "sentiment" in result.error
    assert [s.step_id for s in result.steps] == ["clean", "sentiment", "summary"]  # join never ran
    assert result.step("summary").status == "ok"
