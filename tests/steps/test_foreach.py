"""for_each: one call per item, in order, concurrency, on_item_error, load-time checks."""

from __future__ import annotations

import json
import threading

import pytest

from engine import SpecError, StepError, load_workflow, run_workflow
from engine.runner import open_store
from engine.config import load_config

WF = """\
name: lines
inputs:
  lines: {type: array, items: {type: string}}
steps:
  - id: parse
    for_each: "{{ inputs.lines }}"
    as: line
    concurrency: 3
    inputs: {text: "{{ line }}"}
    llm:
      tier: local
      prompt: "Line: {{ text }}"
      schema: {type: object, properties: {sku: {type: string}}, required: [sku]}
      max_tokens: 20
      retries: 0
  - id: count
    inputs: {parsed: "{{ steps.parse.output }}"}
    script: ops.py:count
outputs:
  skus: "{{ steps.parse.output }}"
  n: "{{ steps.count.output }}"
"""
OPS = {"ops.py": "def count(parsed):\n    return len(parsed)\n\ndef upper(x):\n    return x.upper()\n"}


def sku_responder(delay: float = 0.0, fail: str | None = None):
    def respond(request):
        text = request.messages[-1]["content"].removeprefix("Line: ")
        if delay:
            threading.Event().wait(delay)
        if fail is not None and fail in text:
            return "not json"
        return json.dumps({"sku": text.upper()})
    return respond


def test_each_item_is_its_own_call_and_the_output_keeps_item_order(project, fake):
    fake.responder = sku_responder()
    wf = project(WF, files=OPS)
    lines = [f"item {i}" for i in range(7)]
    result = run_workflow(wf, {"lines": lines})
    assert result.outputs["skus"] == [{"sku": f"ITEM {i}"} for i in range(7)]
    assert result.outputs["n"] == 7
    assert len(fake.requests) == 7
    record = result.step("parse")
    assert [i["index"] for i in record.items] == list(range(7))
    assert record.attempts == 7
    # cost is attributed per item, and sums to the step's
    assert record.cost == pytest.approx(sum(i["cost"] for i in record.items)) and record.cost > 0
    calls = open_store(load_config().store_path()).run(result.run_id)["llm_calls"]
    assert sorted(c["input"]["text"] for c in calls) == sorted(lines)
    assert all(c["step_execution_id"] is not None for c in calls)


def test_items_run_up_to_concurrency_at_once(project, fake):
    active, peak, arrived = [0], [0], [0]
    cond = threading.Condition()

    def respond(request, group: int):
        """Calls are let through in groups of `group`: the k-th call waits until the whole group it
        belongs to has arrived. With at most 3 calls in flight, groups of 3 fill and go; calls
        made one at a time would time out (a failure), whatever the machine's speed."""
        with cond:
            active[0] += 1
            arrived[0] += 1
            peak[0] = max(peak[0], active[0])
            full = -(-arrived[0] // group) * group
            cond.notify_all()
            assert cond.wait_for(lambda: arrived[0] >= full, timeout=30), "calls did not overlap"
            active[0] -= 1
        return {"sku": "x"}

    fake.responder = lambda request: respond(request, 3)
    wf = project(WF, files=OPS)
    run_workflow(wf, {"lines": [str(i) for i in range(9)]})
    assert peak[0] == 3 and arrived[0] == 9
    peak[0] = arrived[0] = 0
    fake.responder = lambda request: respond(request, 1)
    run_workflow(wf, {"lines": [str(i) for i in range(9)]}, parallel=False)
    assert peak[0] == 1 and arrived[0] == 9


def test_on_item_error_fail_skip_collect(project, fake):
    fake.responder = sku_responder(fail="bad")
    lines = ["a", "bad one", "c"]
    wf = project(WF, files=OPS)
    with pytest.raises(StepError) as info:
        run_workflow(wf, {"lines": lines})
    assert "item 1" in str(info.value)
    for mode, skus in (("skip", [{"sku": "A"}, {"sku": "C"}]), ("collect", [{"sku": "A"}, None, {"sku": "C"}])):
        wf = project(WF.replace("concurrency: 3", f"concurrency: 3\n    on_item_error: {mode}")
                     + "  errors: \"{{ steps.parse.errors }}\"\n", files=OPS)
        result = run_workflow(wf, {"lines": lines})
        assert result.outputs["skus"] == skus
        assert [(e["index"], e["item"]) for e in result.outputs["errors"]] == [(1, "bad one")]
        assert "does not match" in result.outputs["errors"][0]["error"] or "JSON" in result.outputs["errors"][0]["error"]


def test_for_each_on_a_script_and_an_empty_list(project, fake):
    wf = project("""\
        name: s
        inputs: {xs: {type: array}}
        steps:
          - id: up
            for_each: "{{ inputs.xs }}"
            inputs: {x: "{{ item }}"}
            script: ops.py:upper
        """, files=OPS)
    assert run_workflow(wf, {"xs": ["a", "b"]}).outputs == {"up": ["A", "B"]}
    assert run_workflow(wf, {"xs": []}).outputs == {"up": []}


def test_for_each_must_yield_a_list(project, fake):
    wf = project(WF, files=OPS)
    wf.write_text(wf.read_text().replace('inputs:\n  lines: {type: array, items: {type: string}}',
                                         'inputs:\n  lines: {type: string}'))
    with pytest.raises(StepError, match="for_each must yield a list, got str"):
        run_workflow(wf, {"lines": "abc"})


@pytest.mark.parametrize("change, fragment, where", [
    (('for_each: "{{ inputs.lines }}"', 'for_each: "{{ inputs.nope }}"'), "unknown input 'inputs.nope'",
     "steps[0](parse).for_each"),
    (('for_each: "{{ inputs.lines }}"', 'for_each: "{{ inputs.lines "'), "template syntax error",
     "steps[0](parse).for_each"),
    (('inputs: {text: "{{ line }}"}', 'inputs: {text: "{{ item }}"}'), "unknown variable 'item'",
     "steps[0](parse).inputs"),
    (("    as: line\n", "    as: steps\n"), "'steps' is taken", "steps[0](parse).as"),
    (("    concurrency: 3\n", "    concurrency: 0\n"), "greater than or equal to 1", "steps[0](parse).concurrency"),
    (("    concurrency: 3\n", "    on_item_error: retry\n"), "'fail', 'skip' or 'collect'", "steps[0](parse).on_item_error"),
    (('    for_each: "{{ inputs.lines }}"\n    as: line\n', ""), "concurrency only applies with for_each",
     "steps[0](parse)"),
])
def test_load_time_checks_name_file_line_and_field(project, change, fragment, where):
    text = WF.replace(*change)
    assert text != WF
    wf = project(text, files=OPS)
    with pytest.raises(SpecError) as info:
        load_workflow(wf)
    hits = [p for p in info.value.problems if fragment in p[2]]
    assert hits, info.value.problems
    assert hits[0][1] == where
    assert hits[0][0].startswith(str(wf) + ":")


def test_for_each_on_a_uses_skill_step(project, fake, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("ENGINE_SKILLS_PATH", str(Path(__file__).resolve().parents[2] / "skills"))
    fake.responder = lambda request: {"label": "complaint" if "broken" in request.messages[1]["content"] else "praise"}
    wf = project("""\
        name: many
        inputs: {reviews: {type: array}}
        steps:
          - id: labels
            uses: classify@1
            for_each: "{{ inputs.reviews }}"
            as: review
            concurrency: 2
            inputs: {text: "{{ review }}"}
            with: {labels: [praise, complaint]}
        """)
    result = run_workflow(wf, {"reviews": ["lovely", "broken lid", "great"]})
    assert [o["label"] for o in result.outputs["labels"]] == ["praise", "complaint", "praise"]
    assert len(fake.requests) == 3


def test_items_overlap_on_the_event_loop_and_keep_order(project):
    import asyncio

    from engine import arun_workflow
    from engine.providers.base import Completion
    from engine.providers.registry import register_provider, unregister_provider

    class AsyncSku:
        name = "fake"

        def __init__(self):
            self.active = self.peak = self.arrived = 0
            self.cond: asyncio.Condition | None = None

        def complete(self, request):  # pragma: no cover - the async runner awaits acomplete
            raise AssertionError("sync path used")

        async def acomplete(self, request):
            # calls go in groups of 3 (the step's concurrency): each waits for its group to arrive,
            # so the overlap does not depend on how fast the machine is
            if self.cond is None:
                self.cond = asyncio.Condition()
            async with self.cond:
                self.active += 1
                self.arrived += 1
                self.peak = max(self.peak, self.active)
                full = -(-self.arrived // 3) * 3
                self.cond.notify_all()
                await asyncio.wait_for(self.cond.wait_for(lambda: self.arrived >= full), 30)
            text = request.messages[-1]["content"].removeprefix("Line: ")
            await asyncio.sleep(0.03 if text.endswith("0") else 0.0)  # the first item finishes last
            self.active -= 1
            return Completion(text=json.dumps({"sku": text.upper()}), finish_reason="stop", input_tokens=3,
                              output_tokens=3, model=request.model)

    provider = AsyncSku()
    register_provider("fake", provider)
    try:
        wf = project(WF, files=OPS)
        result = asyncio.run(arun_workflow(wf, {"lines": [f"l{i}" for i in range(6)]}))
    finally:
        unregister_provider("fake")
    assert result.outputs["skus"] == [{"sku": f"L{i}"} for i in range(6)]
    assert provider.peak == 3


def test_the_cache_serves_items_one_by_one(project, fake):
    fake.responder = sku_responder()
    wf = project(WF.replace("      retries: 0\n", "      retries: 0\n      cache: true\n"), files=OPS)
    run_workflow(wf, {"lines": ["a", "b"]})
    assert len(fake.requests) == 2
    result = run_workflow(wf, {"lines": ["b", "c", "a"]})
    assert result.outputs["skus"] == [{"sku": "B"}, {"sku": "C"}, {"sku": "A"}]
    assert len(fake.requests) == 3  # only the new item reached the tier
    assert [i["served_by"] for i in result.step("parse").items] == ["cache", "llm", "cache"]


# --- for_each over a script step: items run in spans ---------------------------------------------

SCRIPT_WF = """\
name: spans
inputs: {n: {type: integer}}
steps:
  - id: make
    inputs: {n: "{{ inputs.n }}"}
    script: spans_ops.py:make
  - id: each
    for_each: "{{ steps.make.output }}"
    as: x
    concurrency: 3
    inputs: {x: "{{ x }}", k: 10, tag: plain}
    script: spans_ops.py:check
outputs:
  out: "{{ steps.each.output }}"
"""
SPANS_OPS = {"spans_ops.py": """\
def make(n):
    return list(range(n))


def check(x, k, tag):
    if x % 997 == 5:
        raise ValueError(f"bad {x}")
    return {"x": x * k, "tag": tag}


def odd(x):
    return {1: x, "t": (x, x)}


def strange(x):
    return [set(), float("nan"), 2 ** 20000, "\\ud800", 3, 2 ** 70, 1.5, True, None, "é", (1, 2)][x]


def pick(x, y):
    return x["v"] + y
"""}


def _each(result):
    return result.step("each")


@pytest.mark.parametrize("how", ["threads", "one at a time", "event loop"])
def test_script_items_fail_on_the_first_failing_item_in_order(project, how):
    import asyncio

    from engine import arun_workflow

    wf = project(SCRIPT_WF, files=SPANS_OPS)
    run = {"threads": lambda: run_workflow(wf, {"n": 3000}),
           "one at a time": lambda: run_workflow(wf, {"n": 3000}, parallel=False),
           "event loop": lambda: asyncio.run(arun_workflow(wf, {"n": 3000}))}[how]
    with pytest.raises(StepError) as info:  # items 5, 1002 and 1999 fail: the step names item 5
        run()
    assert str(info.value) == "step 'each' item 5: script 'spans_ops.py:check' raised ValueError: bad 5"
    assert info.value.result.step("each").status == "failed"
    ok = run_workflow(wf, {"n": 5}) if how == "threads" else None
    if ok is not None:
        assert ok.outputs["out"] == [{"x": 10 * i, "tag": "plain"} for i in range(5)]


@pytest.mark.parametrize("mode", ["skip", "collect"])
@pytest.mark.parametrize("parallel", [True, False])
def test_script_items_skip_and_collect_keep_order_and_name_each_failure(project, mode, parallel):
    wf = project(SCRIPT_WF.replace("concurrency: 3\n", f"concurrency: 3\n    on_item_error: {mode}\n")
                 + '  errors: "{{ steps.each.errors }}"\n', files=SPANS_OPS)
    result = run_workflow(wf, {"n": 3000}, parallel=parallel)
    bad = [5, 1002, 1999, 2996]
    expected = [None if i in bad else {"x": 10 * i, "tag": "plain"} for i in range(3000)]
    assert result.outputs["out"] == (expected if mode == "collect" else [e for e in expected if e is not None])
    assert result.outputs["errors"] == [{"index": i, "item": i, "error": f"script 'spans_ops.py:check' raised "
                                         f"ValueError: bad {i}"} for i in bad]
    record = _each(result)
    assert record.status == "ok" and record.served_by == "script" and record.calls == [] and record.cost == 0
    assert [s["index"] for s in record.items] == list(range(3000))
    assert record.items[5] == {"index": 5, "status": "failed", "error": "script 'spans_ops.py:check' raised "
                               "ValueError: bad 5"}
    assert record.items[6] == {"index": 6, "status": "ok", "served_by": "script", "tier": None, "model": None,
                               "tokens_in": 0, "tokens_out": 0, "cost": 0.0}


def test_script_items_give_what_a_single_script_step_gives(project):
    """Per item, the same JSON copy and the same errors as the step run on its own."""
    wf = project(SCRIPT_WF.replace("check", "strange").replace("concurrency: 3\n", "on_item_error: collect\n")
                 .replace("inputs: {x: \"{{ x }}\", k: 10, tag: plain}", "inputs: {x: \"{{ x }}\"}")
                 + '  errors: "{{ steps.each.errors }}"\n', files=SPANS_OPS)
    single = project("""\
        name: one
        inputs: {x: {type: integer}}
        steps:
          - id: each
            inputs: {x: "{{ inputs.x }}"}
            script: spans_ops.py:strange
        """, name="one.yaml", files=SPANS_OPS)
    result = run_workflow(wf, {"n": 11})
    errors = {e["index"]: e["error"] for e in result.outputs["errors"]}
    for i in range(11):
        alone = run_workflow(single, {"x": i}, raise_on_error=False)
        if alone.ok:
            assert result.outputs["out"][i] == alone.outputs["each"] and i not in errors
            assert type(result.outputs["out"][i]) is type(alone.outputs["each"])
        else:
            assert result.outputs["out"][i] is None
            assert f"step 'each': {errors[i]}" == alone.error
    assert sorted(errors) == [0, 1, 2, 3]
    assert result.outputs["out"][4:] == [3, 2 ** 70, 1.5, True, None, "é", [1, 2]]


def test_script_items_copy_containers_through_json_and_render_other_templates(project):
    wf = project(SCRIPT_WF.replace("check", "odd").replace("inputs: {x: \"{{ x }}\", k: 10, tag: plain}",
                                                          "inputs: {x: \"{{ x }}\"}"), files=SPANS_OPS)
    assert run_workflow(wf, {"n": 2}).outputs["out"] == [{"1": 0, "t": [0, 0]}, {"1": 1, "t": [1, 1]}]
    wf = project("""\
        name: fields
        inputs: {rows: {type: array}}
        steps:
          - id: each
            for_each: "{{ inputs.rows }}"
            as: row
            inputs: {x: "{{ row }}", y: "{{ row.v }}"}
            script: spans_ops.py:pick
        """, files=SPANS_OPS)
    assert run_workflow(wf, {"rows": [{"v": 1}, {"v": 2}]}).outputs == {"each": [2, 4]}
    with pytest.raises(StepError, match=r"step .each. item 1: expression evaluated to an undefined value"):
        run_workflow(wf, {"rows": [{"v": 1}, {"w": 2}]})
