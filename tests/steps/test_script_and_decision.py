from __future__ import annotations

import pytest

from engine import StepError, run_workflow

SCRIPT = """\
name: s
inputs: {a: {type: integer}, b: {type: integer}}
steps:
  - id: add
    inputs: {a: "{{ inputs.a }}", b: "{{ inputs.b }}"}
    script:
      function: "mathy.py:add"
      schema: {type: object, properties: {sum: {type: integer}}, required: [sum]}
outputs:
  total: "{{ steps.add.output.sum }}"
"""


def test_script_receives_typed_inputs(project):
    wf = project(SCRIPT, files={"mathy.py": "def add(a, b):\n    return {'sum': a + b}\n"})
    result = run_workflow(wf, {"a": 2, "b": 3})
    assert result.outputs == {"total": 5}
    assert result.step("add").served_by == "script" and result.step("add").tokens_in == 0


def test_script_output_schema_is_validated(project):
    wf = project(SCRIPT, files={"mathy.py": "def add(a, b):\n    return {'sum': str(a + b)}\n"})
    with pytest.raises(StepError, match="fails its schema"):
        run_workflow(wf, {"a": 2, "b": 3})


def test_script_exception_is_a_step_error(project):
    wf = project(SCRIPT, files={"mathy.py": "def add(a, b):\n    raise RuntimeError('boom')\n"})
    with pytest.raises(StepError, match="raised RuntimeError: boom"):
        run_workflow(wf, {"a": 2, "b": 3})


def test_script_from_module_path(project):
    wf = project("""\
    name: m
    inputs: {t: {type: string}}
    steps:
      - id: dump
        inputs: {obj: {word: "{{ inputs.t }}"}, sort_keys: true}
        script: "json:dumps"
    """)
    assert run_workflow(wf, {"t": "abcd"}).outputs == {"dump": '{"word": "abcd"}'}


def test_script_found_in_skills_dir(project):
    wf = project("""\
    name: m
    inputs: {t: {type: string}}
    steps:
      - id: up
        inputs: {text: "{{ inputs.t }}"}
        script: "textkit.py:upper"
    """, files={"skills/textkit.py": "def upper(text):\n    return text.upper()\n"})
    assert run_workflow(wf, {"t": "abc"}).outputs == {"up": "ABC"}


DECISION = """\
name: d
inputs: {intent: {type: string}}
steps:
  - id: route
    inputs: {intent: "{{ inputs.intent }}"}
    decision:
      key: "{{ intent }}"
      table: {Card Arrival: logistics, lost card: security}
      on_miss: MISS
outputs:
  team: "{{ steps.route.output }}"
"""


@pytest.mark.parametrize("key", ["card arrival", "  CARD   arrival ", "Card Arrival"])
def test_decision_normalises_case_and_whitespace(project, key):
    wf = project(DECISION.replace("on_miss: MISS", "on_miss: error"))
    result = run_workflow(wf, {"intent": key})
    assert result.outputs == {"team": "logistics"}
    assert result.step("route").served_by == "decision"


def test_decision_miss_error(project):
    wf = project(DECISION.replace("on_miss: MISS", "on_miss: error"))
    with pytest.raises(StepError, match="no entry for key 'refund'"):
        run_workflow(wf, {"intent": "refund"})


def test_decision_miss_default(project):
    wf = project(DECISION.replace("on_miss: MISS", "on_miss: {default: general}"))
    assert run_workflow(wf, {"intent": "refund"}).outputs == {"team": "general"}


def test_decision_miss_llm_fallback_is_logged(project, fake):
    wf = project(DECISION.replace("on_miss: MISS", """on_miss:
        llm:
          prompt: "Which team handles {{ intent }}?"
          schema: {type: string, enum: [logistics, security, payments]}
          max_tokens: 5"""))
    fake.enqueue('"payments"')
    result = run_workflow(wf, {"intent": "refund"})
    assert result.outputs == {"team": "payments"}
    step = result.step("route")
    assert step.served_by == "llm" and step.kind == "decision"
    from engine.runner import open_store
    from engine.config import load_config

    calls = open_store(load_config().store_path()).query("SELECT * FROM llm_calls")
    assert len(calls) == 1 and calls[0]["input"] == {"intent": "refund"} and calls[0]["output"] == "payments"
    # a hit does not call the llm
    assert run_workflow(wf, {"intent": "lost card"}).outputs == {"team": "security"}
    assert len(fake.requests) == 1


def test_decision_csv_with_columns(project):
    wf = project("""\
    name: d
    inputs: {code: {type: string}}
    steps:
      - id: look
        inputs: {code: "{{ inputs.code }}"}
        decision:
          key: "{{ code }}"
          table: {file: codes.csv}
          key_column: code
          value_column: name
    """, files={"codes.csv": "name,code,extra\nEuro,EUR,x\nPound,GBP,y\n"})
    assert run_workflow(wf, {"code": "gbp"}).outputs == {"look": "Pound"}
