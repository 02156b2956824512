"""openai-compatible servers: the per-server structured-output form, learned or configured."""

from __future__ import annotations

import openai
import pytest
from sdkmock import MockServer, recorded

from engine.errors import ConfigError, ProviderUnavailableError
from engine.providers.base import CompletionRequest
from engine.providers.openai_compat import OpenAICompatibleProvider
from engine.providers.registry import get_provider

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
LLAMA_CPP_SERVER_500 = {"error": {"message": "[{'type': 'literal_error', 'loc': ('body', 'response_format', "
                                              "'type'), 'msg': \"Input should be 'text' or 'json_object'\"}]",
                                  "type": "internal_server_error", "param": None, "code": None}}


def req(**options) -> CompletionRequest:
    return CompletionRequest(model="local-model", messages=[{"role": "user", "content": "hi"}], max_tokens=16,
                             schema=SCHEMA, options={"base_url": "http://127.0.0.1:9/v1", **options})


@pytest.fixture
def server():
    def handler(body, request):
        if body.get("response_format", {}).get("type") == "json_schema" and state["reject_json_schema"]:
            return mock.json(500, LLAMA_CPP_SERVER_500)
        return mock.json(200, recorded("openai_chat_completion.json"))

    state = {"reject_json_schema": True}
    mock = MockServer(openai, handler)
    mock.state = state
    return mock


def test_configured_llama_cpp_form(server):
    provider = OpenAICompatibleProvider(http_client=server.client)
    provider.complete(req(structured_output="json_object_schema"))
    body = server.bodies[0]
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert body["max_tokens"] == 16 and "max_completion_tokens" not in body
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


def test_configured_json_schema_form_is_sent_even_for_loose_schemas(server):
    server.state["reject_json_schema"] = False
    OpenAICompatibleProvider(http_client=server.client).complete(req(structured_output="json_schema"))
    assert server.bodies[0]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": False}}


def test_auto_learns_the_form_the_server_accepts(server):
    provider = OpenAICompatibleProvider(http_client=server.client)
    completion = provider.complete(req())
    assert completion.text == '{"label":"spam"}'
    assert [b["response_format"]["type"] for b in server.bodies] == ["json_schema", "json_object"]
    provider.complete(req())  # remembered for this base_url: straight to the accepted form
    assert [b["response_format"]["type"] for b in server.bodies] == ["json_schema", "json_object", "json_object"]


def test_explicit_json_schema_on_a_server_that_rejects_it_is_an_outage(server):
    with pytest.raises(ProviderUnavailableError, match="json_object"):
        OpenAICompatibleProvider(http_client=server.client).complete(req(structured_output="json_schema"))


def test_needs_base_url_and_a_known_form(server):
    provider = OpenAICompatibleProvider(http_client=server.client)
    bare = CompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(ConfigError, match="base_url"):
        provider.complete(bare)
    with pytest.raises(ConfigError, match="structured_output"):
        provider.complete(req(structured_output="xml"))


def test_named_key_is_sent(server, monkeypatch):
    server.state["reject_json_schema"] = False
    monkeypatch.setenv("VLLM_KEY", "token-abc123456789")
    OpenAICompatibleProvider(http_client=server.client).complete(req(api_key_env="VLLM_KEY"))
    assert server.requests[0].headers["authorization"] == "Bearer token-abc123456789"


def test_builtin_providers_are_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="engine.providers")}
    assert names["openai"] == "engine.providers.openai:OpenAIProvider"
    assert names["anthropic"] == "engine.providers.anthropic:AnthropicProvider"
    assert names["openai-compatible"] == "engine.providers.openai_compat:OpenAICompatibleProvider"
    assert type(get_provider("openai-compatible")).__name__ == "OpenAICompatibleProvider"
