"""The anthropic adapter against the HTTP layer: forced tool call, cache_control, usage, errors."""

from __future__ import annotations

import anthropic
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
from engine.providers.anthropic import AnthropicProvider
from engine.providers.base import CompletionRequest
from engine.providers.registry import register_provider, unregister_provider

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
      max_tokens: 30
      retries: 1
outputs:
  label: "{{ steps.classify.output.label }}"
"""
CONFIG = """
tiers:
  cloud:
    - model: anthropic:claude-haiku-4-5
"""


@pytest.fixture
def wired(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef")
    replies: list = []

    def handler(body, req):
        status, payload, headers = replies.pop(0) if replies else (200, recorded("anthropic_tool_use.json"), {})
        if isinstance(payload, Exception):
            raise payload
        return server.json(status, payload, headers)

    server = MockServer(anthropic, handler)
    server.replies = replies
    register_provider("anthropic", AnthropicProvider(http_client=server.client))
    yield server
    unregister_provider("anthropic")


def test_forced_tool_call_cached_system_and_usage(project, wired):
    wf = project(WORKFLOW, config=CONFIG)
    result = run_workflow(wf, {"text": "win money"})
    assert result.outputs == {"label": "spam"}
    body = wired.bodies[0]
    assert body["tool_choice"] == {"type": "tool", "name": "respond"}
    assert body["tools"][0]["input_schema"]["properties"] == {"label": {"enum": ["spam", "ham"]}}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][0]["text"].startswith("You label things.")
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["max_tokens"] == 30
    headers = wired.requests[0].headers  # the SDK sends x-api-key (1.x) or a bearer token (2.x)
    assert "sk-ant-test-0123456789abcdef" in (headers.get("x-api-key") or headers.get("authorization", ""))
    call = result.step("classify").calls[0]
    # usage: 40 uncached + 2048 cache reads in, 18 out
    assert (call["tokens_in"], call["cached_tokens"], call["tokens_out"]) == (2088, 2048, 18)
    # claude-haiku-4-5 defaults: 1.00 in, 0.10 cache read, 5.00 out per million
    assert call["cost"] == pytest.approx((40 * 1.0 + 2048 * 0.10 + 18 * 5.0) / 1e6)
    # the static system block is byte-identical across inputs, so the cache can hit
    run_workflow(wf, {"text": "hello"})
    assert wired.bodies[1]["system"] == body["system"]


def test_cache_writes_cost_more_than_plain_input(project, wired):
    reply = recorded("anthropic_tool_use.json")
    reply["usage"].update(input_tokens=40, cache_creation_input_tokens=2048, cache_read_input_tokens=0)
    wired.replies.append((200, reply, {}))
    call = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "first"}).step("classify").calls[0]
    assert (call["tokens_in"], call["cached_tokens"]) == (2088, 0)
    assert call["cost"] == pytest.approx((40 * 1.0 + 2048 * 1.25 + 18 * 5.0) / 1e6)


def test_reask_goes_back_as_assistant_then_user(project, wired):
    bad = recorded("anthropic_tool_use.json")
    bad["content"][0]["input"] = {"label": "eggs"}
    wired.replies.append((200, bad, {}))
    result = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "x"})
    assert result.outputs == {"label": "spam"}
    assert [m["role"] for m in wired.bodies[1]["messages"]] == ["user", "assistant", "user"]
    assert "eggs" in wired.bodies[1]["messages"][1]["content"]


def test_non_object_schema_is_wrapped_and_unwrapped(wired):
    reply = recorded("anthropic_tool_use.json")
    reply["content"][0]["input"] = {"value": "ham"}
    reply["stop_reason"] = "max_tokens"
    wired.replies.append((200, reply, {}))
    completion = AnthropicProvider(http_client=wired.client).complete(CompletionRequest(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        schema={"enum": ["spam", "ham"]}))
    assert wired.bodies[0]["tools"][0]["input_schema"] == {
        "type": "object", "properties": {"value": {"enum": ["spam", "ham"]}}, "required": ["value"]}
    assert "system" not in wired.bodies[0]
    assert completion.text == '"ham"' and completion.finish_reason == "length"


def _error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize("status,payload,headers,expected", [
    (401, _error("authentication_error", "invalid x-api-key"), {}, AuthenticationError),
    (403, _error("permission_error", "no access"), {}, AuthenticationError),
    (429, _error("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
     {"retry-after": "12"}, RateLimitError),
    (529, _error("overloaded_error", "Overloaded"), {}, ProviderUnavailableError),
    (500, _error("api_error", "Internal server error"), {}, ProviderUnavailableError),
    (400, _error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"), {},
     ContextWindowError),
    (400, _error("invalid_request_error", "tools.0.input_schema: invalid"), {}, ProviderError),
])
def test_error_mapping(wired, status, payload, headers, expected):
    wired.replies.append((status, payload, headers))
    with pytest.raises(expected) as info:
        AnthropicProvider(http_client=wired.client).complete(CompletionRequest(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=5))
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, anthropic.AnthropicError)
    if expected is RateLimitError:
        assert info.value.retry_after == 12


def test_timeout_and_missing_key(wired, monkeypatch):
    wired.replies.append((0, wired.http.ReadTimeout("timed out"), {}))
    req = CompletionRequest(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    with pytest.raises(ProviderTimeoutError):
        AnthropicProvider(http_client=wired.client).complete(req)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider(http_client=wired.client).complete(req)
