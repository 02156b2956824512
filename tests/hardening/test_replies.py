"""No schema escapes: a reply either passes strict JSON + its schema (format included), or fails
the attempt with a ValueError; hostile replies re-ask or escalate and never crash the run."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import run_workflow
from engine.providers.base import Completion
from engine.spec.models import LLMSpec
from engine.steps.llm import parse_and_validate
from engine.strict_json import MAX_DEPTH, MAX_REPLY_CHARS, validator

SCORE = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
         "required": ["score"]}


def spec_for(schema: dict) -> LLMSpec:
    return LLMSpec.model_validate({"prompt": "x", "schema": schema, "max_tokens": 10})


@pytest.mark.parametrize("reply", ['{"score": NaN}', '{"score": Infinity}', '{"score": -Infinity}', "NaN"])
def test_nan_and_infinity_are_not_json(reply: str) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_and_validate(reply, spec_for(SCORE))


@pytest.mark.parametrize("schema, bad, good", [
    ({"type": "string", "format": "date"}, '"2024-13-45"', '"2024-02-29"'),
    ({"type": "string", "format": "email"}, '"not an email"', '"ada@example.com"'),
    ({"type": "string", "format": "ipv4"}, '"999.1.1.1"', '"10.0.0.1"'),
    ({"type": "string", "format": "date-time"}, '"yesterday"', '"2024-01-02T03:04:05Z"'),
    ({"type": "string", "format": "uri"}, '"not a uri"', '"https://example.com/x"'),
])
def test_format_is_checked(schema: dict, bad: str, good: str) -> None:
    with pytest.raises(ValueError, match="is not a"):
        parse_and_validate(bad, spec_for(schema))
    assert parse_and_validate(good, spec_for(schema)) == json.loads(good)


@pytest.mark.parametrize("reply, message", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper"),
    ('{"a": ' * 70 + "1" + "}" * 70, "nests deeper"),
    ('{"score": "\\ud800"}', "invalid Unicode"),
    ('"' + "x" * (MAX_REPLY_CHARS + 1) + '"', "characters"),
    ("```json\n" + "[" * 5000 + "```", "nests deeper|not valid JSON"),
])
def test_hostile_replies_are_value_errors(reply: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_and_validate(reply, spec_for({"type": ["object", "array", "string"]}))


HOSTILE = ["[" * 50_000 + "]" * 50_000, '{"label": "\\udc80"}', '{"label": NaN}', "x" * (MAX_REPLY_CHARS + 10),
           '{"label": "' + "\ud800" + '"}']

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label]}
      max_tokens: 20
      retries: 1
      escalate: [premium]
"""


@pytest.mark.parametrize("hostile", HOSTILE, ids=["deep", "surrogate-escape", "nan", "huge", "raw-surrogate"])
def test_a_hostile_reply_fails_the_attempt_then_the_run_goes_on(project, fake, hostile: str) -> None:
    fake.enqueue(Completion(text=hostile, finish_reason="stop", output_tokens=5), Completion(text=hostile, finish_reason="stop", output_tokens=5),
                 {"label": "ham"})
    result = run_workflow(project(WORKFLOW), {"text": "hello"})
    assert result.ok and result.outputs == {"classify": {"label": "ham"}}
    step = result.step("classify")
    assert step.tier == "premium" and step.attempts == 3


def test_every_hostile_reply_failing_is_a_failed_run_not_a_crash(project, fake) -> None:
    fake.responder = lambda request: Completion(text='{"label": NaN}', finish_reason="stop", output_tokens=3)
    result = run_workflow(project(WORKFLOW), {"text": "hello"}, raise_on_error=False)
    assert not result.ok and "not valid JSON" in (result.error or "")


# --- the property test: thousands of (schema, reply) pairs, 0 escapes and 0 crashes --------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=20)

schemas = st.one_of(
    st.just(SCORE),
    st.just({"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}}, "required": ["label"],
             "additionalProperties": False}),
    st.just({"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 3}),
    st.just({"type": "string", "format": "date"}),
    st.just({"type": "string", "format": "email"}),
    st.just({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                              "n": {"type": "number"}}}),
    st.just({"type": ["object", "array", "string", "number", "boolean", "null"]}),
    st.just({}),
)


def _mutations(value: object) -> st.SearchStrategy[str]:
    text = json.dumps(value, allow_nan=True)
    return st.one_of(
        st.just(text),
        st.just(f"```json\n{text}\n```"),
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i]),  # cut off
        st.text(max_size=40),  # anything at all
        st.integers(1, 200).map(lambda n: "[" * n + text + "]" * n),  # deep
        st.sampled_from(["\ud800", "\\ud800", "\\udfff", "\x00", "NaN", "Infinity", "-Infinity", "1e999"]).map(
            lambda s: text.replace("0", s, 1) if "0" in text else f'["{s}"]'),
    )


replies = json_values.flatmap(_mutations)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=schemas, reply=replies)
def test_no_reply_escapes_its_schema_or_crashes(schema: dict, reply: str) -> None:
    spec = spec_for(schema)
    try:
        value = parse_and_validate(reply, spec)
    except ValueError:
        return  # the attempt fails: re-ask or escalate
    # Accepted: it must be strict JSON, valid Unicode, and pass the schema with format checked.
    text = json.dumps(value, allow_nan=False)
    text.encode("utf-8")
    assert not list(validator(schema).iter_errors(value))
    assert json.loads(text) == value
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(value))


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def test_depth_limit_is_generous_for_real_data() -> None:
    nested = json.dumps({"a": [[{"b": [1]}]]})
    assert parse_and_validate(nested, spec_for({})) == {"a": [[{"b": [1]}]]}
    assert MAX_DEPTH >= 32


def test_engine_run_never_prints_nan(project) -> None:
    from click.testing import CliRunner

    from engine.cli import cli

    path = project("""\
name: nan_demo
steps:
  - id: score
    script: ops.py:score
""", files={"ops.py": "def score():\n    return {'score': float('nan')}\n"})
    result = CliRunner().invoke(cli, ["run", str(path), "-q"])
    assert result.exit_code == 1 and "NaN" not in result.stdout
    assert "returned non-JSON data" in result.stderr


@pytest.mark.parametrize("fmt, good, bad", [("iri", "http://例え.jp/パス", "http://exa mple.com"),
                                            ("iri-reference", "../パス", "/a b")])
def test_iri_formats_are_checked(fmt: str, good: str, bad: str) -> None:
    check = validator({"type": "string", "format": fmt})
    assert list(check.iter_errors(good)) == []
    assert [e.message for e in check.iter_errors(bad)] == [f"{bad!r} is not a {fmt!r}"]


def test_importing_the_engine_does_not_compile_the_iri_grammar() -> None:
    """jsonschema's `iri` checks compile a grammar when imported (seconds of CPU per process): the
    engine imports jsonschema without them and loads them when a schema first uses the format."""
    import subprocess
    import sys

    code = ("import sys, engine; from engine.strict_json import validator; before = 'rfc3987_syntax' in sys.modules; "
            "validator({'format': 'iri'}).is_valid('http://x'); print(before, 'rfc3987_syntax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
