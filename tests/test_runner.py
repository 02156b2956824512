from __future__ import annotations

import asyncio

import pytest

from engine import InputError, arun_workflow, load_workflow, run_workflow
from engine.steps.base import StepOutcome

WF = """\
name: flow
version: 3
inputs:
  n: {type: integer, minimum: 0}
  word: {type: string, default: hi}
steps:
  - id: double
    inputs: {n: "{{ inputs.n }}"}
    script: ops.py:double
  - id: big
    when: "steps.double.output > 10"
    inputs: {n: "{{ steps.double.output }}", word: "{{ inputs.word }}"}
    script: ops.py:shout
  - id: small
    when: "{{ steps.double.output <= 10 }}"
    inputs: {n: "{{ steps.double.output }}"}
    script: ops.py:double
outputs:
  doubled: "{{ steps.double.output }}"
  big: "{{ steps.big.output }}"
  small: "{{ steps.small.output }}"
  text: "n={{ steps.double.output }}"
"""
OPS = {"ops.py": "def double(n):\n    return n * 2\n\ndef shout(n, word):\n    return f'{word.upper()} {n}'\n"}


def test_outputs_keep_types_and_when_skips(project):
    wf = project(WF, files=OPS)
    result = run_workflow(wf, {"n": 7})
    assert result.outputs == {"doubled": 14, "big": "HI 14", "small": None, "text": "n=14"}
    assert [s.status for s in result.steps] == ["ok", "ok", "skipped"]
    result = run_workflow(wf, {"n": 2, "word": "yo"})
    assert result.outputs == {"doubled": 4, "big": None, "small": 8, "text": "n=4"}
    assert result.step("big").status == "skipped"


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "missing input 'n'"),
        ({"n": -1}, "input 'n': -1 is less than the minimum of 0"),
        ({"n": "3"}, "input 'n': '3' is not of type 'integer'"),
        ({"n": 1, "extra": 2}, "unknown input(s) extra"),
    ],
)
def test_inputs_are_validated_first(project, inputs, message):
    wf = project(WF, files=OPS)
    with pytest.raises(InputError) as info:
        run_workflow(wf, inputs)
    assert message in str(info.value)


def test_store_rows_after_a_run(project, fake):
    wf = project(
        """\
        name: logged
        inputs: {q: {type: string}}
        steps:
          - id: ask
            inputs: {q: "{{ inputs.q }}"}
            llm: {prompt: "Q: {{ q }}", schema: {type: object, required: [a]}, max_tokens: 8, escalate: [premium]}
          - id: route
            inputs: {a: "{{ steps.ask.output.a }}"}
            decision: {key: "{{ a }}", table: {x: 1}, on_miss: {default: 0}}
        """
    )
    fake.enqueue("oops", "{}", {"a": "x"})
    result = run_workflow(wf, {"q": "why"}, tags={"user": "u1"})
    from engine.config import load_config
    from engine.runner import open_store

    store = open_store(load_config().store_path())
    run = store.run(result.run_id)
    assert run["status"] == "ok" and run["workflow"] == "logged" and run["tags"] == {"user": "u1"}
    assert run["outputs"] == {"route": 1} and run["inputs"] == {"q": "why"}
    assert [s["step_id"] for s in run["steps"]] == ["ask", "route"]
    ask = run["steps"][0]
    assert ask["served_by"] == "llm" and ask["tier"] == "premium" and ask["attempts"] == 3
    calls = run["llm_calls"]
    assert [c["outcome"] for c in calls] == ["invalid", "invalid", "valid"]
    assert {c["step_execution_id"] for c in calls} == {ask["id"]}
    assert all(c["input"] == {"q": "why"} for c in calls)
    assert len({c["input_hash"] for c in calls}) == 1 and len({c["prompt_hash"] for c in calls}) == 1
    assert calls[-1]["output"] == {"a": "x"} and calls[0]["raw_output"] == "oops"
    assert run["tokens_in"] == sum(c["tokens_in"] for c in calls) > 0
    assert run["cost"] == pytest.approx(sum(c["cost"] for c in calls))


def test_failed_run_is_recorded(project, fake):
    wf = project("""\
    name: f
    steps:
      - id: ask
        llm: {prompt: "hi", schema: {type: integer}, max_tokens: 4, retries: 0}
    """)
    fake.enqueue('"no"', '"no"', '"no"')
    result = run_workflow(wf, {}, raise_on_error=False)
    from engine.config import load_config
    from engine.runner import open_store

    run = open_store(load_config().store_path()).run(result.run_id)
    assert run["status"] == "failed" and "no valid output" in run["error"]
    assert run["steps"][0]["status"] == "failed"


def test_async_variant(project, fake):
    wf = project(WF, files=OPS)

    async def main():
        return await asyncio.gather(*(arun_workflow(wf, {"n": i}) for i in range(5)))

    results = asyncio.run(main())
    assert [r.outputs["doubled"] for r in results] == [0, 2, 4, 6, 8]


def test_servers_answer_before_tiers(project, fake):
    wf = project("""\
    name: served
    inputs: {q: {type: string}}
    steps:
      - id: ask
        inputs: {q: "{{ inputs.q }}"}
        llm: {prompt: "Q: {{ q }}", schema: {type: string}, max_tokens: 4}
    """)

    class Memo:
        def __init__(self):
            self.seen = {}

        def serve(self, ctx, call):
            if call.input_hash in self.seen:
                return StepOutcome(output=self.seen[call.input_hash], served_by="memo")
            return None

        def observe(self, ctx, call, outcome):
            self.seen[call.input_hash] = outcome.output

    memo = Memo()
    fake.enqueue('"first"')
    assert run_workflow(wf, {"q": "a"}, servers=[memo]).outputs == {"ask": "first"}
    again = run_workflow(wf, {"q": "  a "}, servers=[memo])  # whitespace-normalised input hash
    assert again.outputs == {"ask": "first"} and again.step("ask").served_by == "memo"
    assert len(fake.requests) == 1


def test_loaded_workflow_object_can_be_reused(project, fake):
    wf = load_workflow(project(WF, files=OPS))
    assert run_workflow(wf, {"n": 1}).outputs["doubled"] == 2
    assert run_workflow(wf, {"n": 6}).outputs["doubled"] == 12


def test_templated_schema_constrains_to_input_labels(project, fake):
    wf = project("""\
    name: labels
    inputs: {text: {type: string}, labels: {type: array}}
    steps:
      - id: pick
        inputs: {text: "{{ inputs.text }}", labels: "{{ inputs.labels }}"}
        llm:
          prompt: "{{ text }}"
          schema: {type: object, properties: {label: {enum: "{{ labels }}"}}, required: [label]}
          max_tokens: 8
    """)
    fake.enqueue({"label": "red"}, {"label": "blue"})
    result = run_workflow(wf, {"text": "sky", "labels": ["blue", "green"]})
    assert result.outputs == {"pick": {"label": "blue"}}
    assert '"enum": ["blue", "green"]' in fake.requests[0].messages[0]["content"]
    assert "'red' is not one of ['blue', 'green']" in result.step("pick").validation_errors[0]
