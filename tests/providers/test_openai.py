"""The openai adapter against the HTTP layer: request shape, wire-format replies, error mapping."""

from __future__ import annotations

import copy

import openai
import pytest
from sdkmock import MockServer, recorded

from engine import run_workflow
from engine.errors import (
    AuthenticationError,
    ContextWindowError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from engine.providers.base import CompletionRequest
from engine.providers.openai import OpenAIProvider, response_format, strict_compatible
from engine.providers.registry import register_provider, unregister_provider

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}},
          "required": ["label"], "additionalProperties": False}
OPEN_SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}, "note": {"type": "string"}},
               "required": ["label"]}

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: cloud
      system: You label things.
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [spam, ham]}}
        required: [label]
        additionalProperties: false
      max_tokens: 20
outputs:
  label: "{{ steps.classify.output.label }}"
"""
CONFIG = """
tiers:
  cloud:
    - model: openai:gpt-4o-mini
"""


def request(schema=SCHEMA, **options) -> CompletionRequest:
    return CompletionRequest(model="gpt-4o-mini", messages=[{"role": "system", "content": "Reply in JSON."},
                                                            {"role": "user", "content": "hi"}],
                             max_tokens=20, schema=schema, options=options)


@pytest.fixture
def wired(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    replies: list = []

    def handler(body, req):
        status, payload, headers = replies.pop(0) if replies else (200, recorded("openai_chat_completion.json"), {})
        if isinstance(payload, Exception):
            raise payload
        return server.json(status, payload, headers)

    server = MockServer(openai, handler)
    server.replies = replies
    provider = OpenAIProvider(http_client=server.client)
    register_provider("openai", provider)
    yield server
    unregister_provider("openai")


def test_structured_output_strict_json_schema_and_cached_usage(project, wired):
    result = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "win money"})
    assert result.outputs == {"label": "spam"}
    body = wired.bodies[0]
    assert body["model"] == "gpt-4o-mini" and body["max_completion_tokens"] == 20
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}
    assert body["messages"][0]["role"] == "system" and body["messages"][1]["content"] == "Label this: win money"
    assert wired.requests[0].headers["authorization"] == "Bearer sk-test-0123456789abcdef"
    call = result.step("classify").calls[0]
    assert (call["tokens_in"], call["tokens_out"], call["cached_tokens"]) == (1200, 6, 1024)
    # default price of gpt-4o-mini: 0.15 in, 0.075 cached in, 0.60 out per million
    assert call["cost"] == pytest.approx((176 * 0.15 + 1024 * 0.075 + 6 * 0.60) / 1e6)


def test_json_mode_when_schema_is_not_strict_compatible():
    assert not strict_compatible(OPEN_SCHEMA)
    assert response_format(OPEN_SCHEMA) == {"type": "json_object"}
    assert strict_compatible(SCHEMA)
    nested = {"type": "object", "properties": {"items": {"type": "array", "items": OPEN_SCHEMA}},
              "required": ["items"], "additionalProperties": False}
    assert not strict_compatible(nested)


def test_length_finish_reason_is_reported(wired):
    reply = copy.deepcopy(recorded("openai_chat_completion.json"))
    reply["choices"][0]["finish_reason"] = "length"
    wired.replies.append((200, reply, {}))
    completion = OpenAIProvider(http_client=wired.client).complete(request())
    assert completion.finish_reason == "length"


def test_missing_key_names_the_variable(project, wired, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    result = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "x"}, raise_on_error=False)
    assert not result.ok and "OPENAI_API_KEY" in result.error
    assert wired.requests == []


def test_named_key_variable(wired, monkeypatch):
    monkeypatch.setenv("MY_TEAM_KEY", "sk-team-key-987654321")
    OpenAIProvider(http_client=wired.client).complete(request(api_key_env="MY_TEAM_KEY"))
    assert wired.requests[0].headers["authorization"] == "Bearer sk-team-key-987654321"
    monkeypatch.delenv("MY_TEAM_KEY")
    with pytest.raises(AuthenticationError, match="MY_TEAM_KEY"):
        OpenAIProvider(http_client=wired.client).complete(request(api_key_env="MY_TEAM_KEY"))


def _error(message: str, code: str | None = None, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("status,payload,headers,expected", [
    (401, _error("Incorrect API key provided: sk-test-0123456789abcdef.", "invalid_api_key"), {},
     AuthenticationError),
    (403, _error("Project does not have access to model"), {}, AuthenticationError),
    (429, _error("Rate limit reached", "rate_limit_exceeded", "requests"), {"retry-after": "7"}, RateLimitError),
    (500, _error("The server had an error", None, "server_error"), {}, ProviderUnavailableError),
    (503, _error("Service unavailable", None, "server_error"), {}, ProviderUnavailableError),
    (400, _error("This model's maximum context length is 128000 tokens.", "context_length_exceeded"), {},
     ContextWindowError),
    (400, _error("Invalid schema for response_format"), {}, ProviderError),
])
def test_error_mapping(wired, status, payload, headers, expected):
    wired.replies.append((status, payload, headers))
    with pytest.raises(expected) as info:
        OpenAIProvider(http_client=wired.client).complete(request())
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, openai.OpenAIError)
    assert "0123456789abcdef" not in str(info.value)  # the key never shows
    if expected is RateLimitError:
        assert info.value.retry_after == 7


def test_timeouts_and_connection_errors(wired):
    http = wired.http
    wired.replies.append((0, http.ReadTimeout("read timed out"), {}))
    with pytest.raises(ProviderTimeoutError):
        OpenAIProvider(http_client=wired.client).complete(request())
    wired.replies.append((0, http.ConnectError("connection refused"), {}))
    with pytest.raises(ProviderUnavailableError):
        OpenAIProvider(http_client=wired.client).complete(request())


def test_logprobs_are_requested_and_parsed_for_confidence(wired):
    """A gated step asks for logprobs (top 10); the reply's `choices[0].logprobs.content` (OpenAI's
    documented shape) becomes the completion's logprobs and a confidence over the enum."""
    import math

    from engine.quality.confidence import answer_confidence

    reply = copy.deepcopy(recorded("openai_chat_completion.json"))
    reply["choices"][0]["message"]["content"] = '{"label":"spam"}'

    def tok(t, p, alts=()):
        return {"token": t, "logprob": math.log(p), "bytes": list(t.encode()),
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())}]
                + [{"token": a, "logprob": math.log(q), "bytes": list(a.encode())} for a, q in alts]}

    reply["choices"][0]["logprobs"] = {"content": [
        tok('{"', 0.99), tok("label", 0.99), tok('":"', 0.99), tok("sp", 0.6, [("ham", 0.2), ("other", 0.2)]),
        tok("am", 0.99), tok('"}', 0.99)], "refusal": None}
    wired.replies.append((200, reply, {}))
    req = CompletionRequest(model="gpt-4o-mini", messages=request().messages, max_tokens=20, schema=SCHEMA,
                            logprobs=True)
    completion = OpenAIProvider(http_client=wired.client).complete(req)
    assert wired.bodies[-1]["logprobs"] is True and wired.bodies[-1]["top_logprobs"] == 10
    assert [t["token"] for t in completion.logprobs][:4] == ['{"', "label", '":"', "sp"]
    # 'sp' holds 0.6 of the 0.8 mass on labels the schema allows ('ham' 0.2; 'other' is not one)
    assert answer_confidence(completion.text, completion.logprobs, SCHEMA) == pytest.approx(0.75)
    wired.replies.append((200, recorded("openai_chat_completion.json"), {}))
    OpenAIProvider(http_client=wired.client).complete(request())
    assert "logprobs" not in wired.bodies[-1]  # only gated steps pay for them
