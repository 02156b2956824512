"""llm steps against the fake provider: validation, re-ask, escalation, caps, fallbacks."""

from __future__ import annotations

import pytest

from engine import LLMStepError, run_workflow
from engine.errors import AuthenticationError, ProviderUnavailableError, StepError
from engine.providers.base import Completion

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      system: You label things.
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [spam, ham]}}
        required: [label]
        additionalProperties: false
      max_tokens: 12
      retries: 1
      escalate: [premium]
outputs:
  label: "{{ steps.classify.output.label }}"
"""


def test_valid_first_reply(project, fake):
    fake.enqueue({"label": "ham"})
    result = run_workflow(project(WORKFLOW), {"text": "hello"})
    assert result.outputs == {"label": "ham"}
    step = result.step("classify")
    assert (step.served_by, step.tier, step.model, step.attempts) == ("llm", "local", "small", 1)
    request = fake.requests[0]
    assert request.max_tokens == 12
    assert request.messages[0]["role"] == "system"
    assert request.messages[0]["content"].startswith("You label things.")
    assert '"enum": ["spam", "ham"]' in request.messages[0]["content"]
    assert request.messages[1] == {"role": "user", "content": "Label this: hello"}


def test_static_prefix_is_identical_across_inputs(project, fake):
    fake.enqueue({"label": "ham"}, {"label": "spam"})
    wf = project(WORKFLOW)
    run_workflow(wf, {"text": "one"})
    run_workflow(wf, {"text": "two"})
    first, second = fake.requests
    assert first.messages[0] == second.messages[0]
    assert first.messages[1] != second.messages[1]


def test_reask_with_validation_error_then_valid(project, fake):
    fake.enqueue({"label": "eggs"}, {"label": "spam"})
    result = run_workflow(project(WORKFLOW), {"text": "buy now"})
    assert result.outputs == {"label": "spam"}
    step = result.step("classify")
    assert step.attempts == 2 and step.tier == "local"
    assert "'eggs' is not one of" in step.validation_errors[0]
    reask = fake.requests[1].messages
    assert reask[2] == {"role": "assistant", "content": '{"label": "eggs"}'}
    assert "rejected" in reask[3]["content"] and "'eggs' is not one of" in reask[3]["content"]


def test_escalates_to_next_tier_after_retries(project, fake):
    fake.enqueue("not json", {"label": "maybe"}, {"label": "ham"})
    result = run_workflow(project(WORKFLOW), {"text": "x"})
    step = result.step("classify")
    assert result.outputs == {"label": "ham"}
    assert (step.tier, step.model, step.attempts) == ("premium", "large", 3)
    assert [c["tier"] for c in step.calls] == ["local", "local", "premium"]
    assert [c["outcome"] for c in step.calls] == ["invalid", "invalid", "valid"]
    # premium prices: 10 in / 30 out per million tokens
    premium = step.calls[2]
    assert premium["cost"] == pytest.approx((premium["tokens_in"] * 10 + premium["tokens_out"] * 30) / 1e6)
    assert step.cost == pytest.approx(sum(c["cost"] for c in step.calls))


def test_truncated_reply_is_a_failure(project, fake):
    fake.enqueue(Completion(text='{"label": "ha', finish_reason="length", input_tokens=5, output_tokens=12),
                 {"label": "ham"})
    result = run_workflow(project(WORKFLOW), {"text": "x"})
    step = result.step("classify")
    assert "cut off by max_tokens (12)" in step.validation_errors[0]
    assert result.outputs == {"label": "ham"}


def test_cap_is_sent_and_enforced(project, fake):
    # The fake emulates the cap a word a token: 20 words > 12 tokens gives finish_reason length.
    long = '{"label": "ham", "note": "' + " ".join(["word"] * 20) + '"}'
    fake.enqueue(long, long, long, long)
    with pytest.raises(LLMStepError) as info:
        run_workflow(project(WORKFLOW), {"text": "x"})
    assert all("cut off" in a["error"] for a in info.value.attempts)


def test_all_tiers_exhausted_never_returns_invalid_output(project, fake):
    fake.enqueue({"label": "a"}, {"label": "b"}, {"label": "c"}, {"label": "d"})
    with pytest.raises(LLMStepError) as info:
        run_workflow(project(WORKFLOW), {"text": "x"})
    err = info.value
    assert len(err.attempts) == 4
    assert [a["tier"] for a in err.attempts] == ["local", "local", "premium", "premium"]
    assert "no valid output after 4 attempt(s)" in str(err)
    result = err.result
    assert result.status == "failed" and result.outputs == {}


def test_raise_on_error_false_returns_failed_result(project, fake):
    fake.enqueue(*["bad"] * 4)
    result = run_workflow(project(WORKFLOW), {"text": "x"}, raise_on_error=False)
    assert not result.ok and result.outputs == {}
    assert result.step("classify").status == "failed"


def test_provider_error_moves_to_next_model_in_chain(project, fake):
    config = """
    tiers:
      local:
        - {model: "fake:primary"}
        - {model: "fake:backup"}
      premium:
        - {model: "fake:large"}
    """
    fake.enqueue(ProviderUnavailableError("503 from upstream"), {"label": "ham"})
    result = run_workflow(project(WORKFLOW, config=config), {"text": "x"})
    step = result.step("classify")
    assert step.model == "backup" and step.tier == "local"
    assert step.calls[0]["outcome"] == "error" and "503" in step.calls[0]["error"]


def test_authentication_error_fails_loudly(project, fake):
    fake.enqueue(AuthenticationError("invalid api key"), {"label": "ham"})
    with pytest.raises(StepError, match="authentication failed.*invalid api key"):
        run_workflow(project(WORKFLOW), {"text": "x"})


def test_fenced_json_is_accepted(project, fake):
    fake.enqueue('```json\n{"label": "spam"}\n```')
    assert run_workflow(project(WORKFLOW), {"text": "x"}).outputs == {"label": "spam"}


def test_pydantic_model_validation_after_schema(project, fake):
    wf = project(
        """\
        name: typed
        inputs: {q: {type: string}}
        steps:
          - id: ask
            inputs: {q: "{{ inputs.q }}"}
            llm: {prompt: "{{ q }}", schema: "models.py:Answer", max_tokens: 20, retries: 1}
        """,
        files={"models.py": (
            "from pydantic import BaseModel, field_validator\n"
            "class Answer(BaseModel):\n"
            "    word: str\n"
            "    @field_validator('word')\n"
            "    @classmethod\n"
            "    def lower(cls, v):\n"
            "        if v != v.lower():\n"
            "            raise ValueError('must be lower case')\n"
            "        return v\n")},
    )
    fake.enqueue({"word": "LOUD"}, {"word": "quiet"})
    result = run_workflow(wf, {"q": "x"})
    assert result.outputs == {"ask": {"word": "quiet"}}
    assert "must be lower case" in result.step("ask").validation_errors[0]


def test_missing_template_variable_is_an_error_not_empty(project, fake):
    wf = project(WORKFLOW.replace('text: "{{ inputs.text }}"', 'text: "{{ inputs.text.missing }}"'))
    with pytest.raises(StepError, match="undefined"):
        run_workflow(wf, {"text": "x"})
    assert fake.requests == []
