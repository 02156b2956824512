"""Anthropic through the official `anthropic` SDK (Messages API).

Structured output: a forced tool call (`tool_choice: {type: tool, name: respond}`) whose
`input_schema` is the step's schema (a non-object schema is wrapped as `{"value": ...}` and
unwrapped). The static system prefix (system prompt + schema) is sent as a system block marked
`cache_control: {type: ephemeral}`, so repeated calls read it from Anthropic's prompt cache once
it is long enough to cache (1,024+ tokens on most models). Usage: `input_tokens` +
`cache_read_input_tokens` + `cache_creation_input_tokens` is the prompt; cache reads are billed at
the cached-input price.

SDK retries are off: the engine decides where a failed call goes next. Options: `api_key_env`
(default ANTHROPIC_API_KEY), `base_url`, `timeout` (60), `max_retries` (0), `cache_system`
(true), `send_temperature` (true; only where the installed SDK still takes `temperature`).

Errors are mapped once, in `map_error` (401/403, 429 with retry-after, 529 overloaded and 5xx,
timeouts, connection errors, "prompt is too long").
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from typing import Any

import anthropic


from engine.errors import (
    AuthenticationError,
    ContextWindowError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from engine.providers.loops import LoopClients
from engine.providers.base import Completion, CompletionRequest
from engine.providers.keys import api_key, redact, retry_after

TOOL = "respond"
# Newer SDKs (2.x) dropped sampling parameters from `messages.create`; send it where it exists.
_SDK_TAKES_TEMPERATURE = "temperature" in inspect.signature(anthropic.resources.Messages.create).parameters
_CONTEXT_MARKERS = ("prompt is too long", "context window", "context length", "too many tokens")


def tool_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The tool's input schema, and whether the step's schema was wrapped as `{"value": ...}`."""
    if schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {"value": schema}, "required": ["value"]}, True


def map_error(e: anthropic.AnthropicError, model: str, key: str | None = None) -> ProviderError:
    """Translate an `anthropic` SDK error into the engine's error tree (the one place we do)."""
    kw = {"provider": "anthropic", "model": model}
    status = getattr(e, "status_code", None)
    text = redact(f"anthropic: {f'HTTP {status}: ' if status else ''}{getattr(e, 'message', None) or e}", key)
    if isinstance(e, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return AuthenticationError(text, **kw)
    if isinstance(e, anthropic.RateLimitError):
        return RateLimitError(text, retry_after=retry_after(e.response.headers), **kw)
    if isinstance(e, anthropic.APITimeoutError):
        return ProviderTimeoutError(text, **kw)
    if isinstance(e, anthropic.APIConnectionError):
        return ProviderUnavailableError(text, **kw)
    if isinstance(e, anthropic.APIStatusError):
        body = (str(e.body or "") + " " + str(e.message)).lower()
        if status in (400, 413) and any(m in body for m in _CONTEXT_MARKERS):
            return ContextWindowError(text, **kw)
        if status is not None and status >= 500:
            return ProviderUnavailableError(text, **kw)
    return ProviderError(text, **kw)


class AnthropicProvider:
    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"

    def __init__(self, http_client: Any = None, async_http_client: Any = None):
        """`http_client` / `async_http_client`: injected transports (tests). With only a sync one,
        `acomplete` runs `complete` on a worker thread through it."""
        self.http_client = http_client
        self.async_http_client = async_http_client
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._async_clients = LoopClients()

    def client(self, options: dict[str, Any], model: str) -> tuple[Any, str | None]:
        key = api_key(self.name, options, self.key_env, model)
        timeout = float(options.get("timeout", 60))
        retries = int(options.get("max_retries", 0))
        cache_key = (key, options.get("base_url"), timeout, retries)
        client = self._clients.get(cache_key)
        if client is None:
            with self._lock:
                client = self._clients.get(cache_key)
                if client is None:
                    cls = anthropic.Anthropic
                    client = cls(api_key=key, base_url=options.get("base_url"), timeout=timeout,
                                 max_retries=retries,
                                 http_client=self.http_client)
                    self._clients[cache_key] = client
        return client, key

    async def aclient(self, options: dict[str, Any], model: str) -> tuple[Any, str | None]:
        """The `AsyncAnthropic` client for these options on the running event loop (see
        `engine.providers.loops`: one per loop, closed when the loop shuts down)."""
        key = api_key(self.name, options, self.key_env, model)
        timeout = float(options.get("timeout", 60))
        retries = int(options.get("max_retries", 0))
        cache_key = (key, options.get("base_url"), timeout, retries)
        client = await self._async_clients.get(cache_key, lambda: anthropic.AsyncAnthropic(
            api_key=key, base_url=options.get("base_url"), timeout=timeout, max_retries=retries,
            http_client=self.async_http_client), owned=self.async_http_client is None)
        return client, key

    def build(self, request: CompletionRequest) -> tuple[dict[str, Any], bool]:
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        kwargs: dict[str, Any] = {
            "model": request.model, "max_tokens": request.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]}
                         for m in request.messages if m["role"] != "system"],
        }
        if _SDK_TAKES_TEMPERATURE and request.options.get("send_temperature", True):
            kwargs["temperature"] = request.temperature
        if system:
            block: dict[str, Any] = {"type": "text", "text": system}
            if request.options.get("cache_system", True):
                block["cache_control"] = {"type": "ephemeral"}
            kwargs["system"] = [block]
        wrapped = False
        if request.schema is not None:
            schema, wrapped = tool_schema(request.schema)
            kwargs["tools"] = [{"name": TOOL, "description": "Give the answer. Its input is the reply.",
                                "input_schema": schema}]
            kwargs["tool_choice"] = {"type": "tool", "name": TOOL}
        return kwargs, wrapped

    def complete(self, request: CompletionRequest) -> Completion:
        client, key = self.client(request.options, request.model)
        kwargs, wrapped = self.build(request)
        try:
            resp = client.messages.create(**kwargs)
        except Exception as e:
            mapped = self._error(e, request, key)
            if mapped is e:
                raise
            raise mapped from e
        return self._parse(resp, request, wrapped)

    async def acomplete(self, request: CompletionRequest) -> Completion:
        """`complete` through `AsyncAnthropic`, on the caller's event loop."""
        if self.http_client is not None and self.async_http_client is None:
            return await asyncio.to_thread(self.complete, request)
        client, key = await self.aclient(request.options, request.model)
        kwargs, wrapped = self.build(request)
        try:
            resp = await client.messages.create(**kwargs)
        except Exception as e:
            mapped = self._error(e, request, key)
            if mapped is e:
                raise
            raise mapped from e
        return self._parse(resp, request, wrapped)

    def _error(self, e: Exception, request: CompletionRequest, key: str | None) -> Exception:
        """The engine error for an SDK exception (mapped in `map_error`); others unchanged."""
        if isinstance(e, anthropic.AnthropicError):
            return map_error(e, request.model, key)
        if isinstance(e, json.JSONDecodeError):  # a 200 whose body is not JSON
            return ProviderUnavailableError(f"anthropic: malformed response body: {e}", provider=self.name,
                                            model=request.model)
        return e

    def _parse(self, resp: Any, request: CompletionRequest, wrapped: bool) -> Completion:
        try:
            return parse_message(resp, request.model, wrapped)
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            raise ProviderUnavailableError(f"anthropic: unexpected response shape: {e}", provider=self.name,
                                           model=request.model) from e


def parse_message(resp: Any, model: str, wrapped: bool = False) -> Completion:
    text = ""
    for block in resp.content:
        if block.type == "tool_use" and block.name == TOOL:
            value = block.input
            if wrapped and isinstance(value, dict) and "value" in value:
                value = value["value"]
            text = json.dumps(value, ensure_ascii=False)
            break
    else:
        text = "".join(getattr(b, "text", "") for b in resp.content if b.type == "text")
    usage = resp.usage
    cache_read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
    cache_write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return Completion(
        text=text,
        finish_reason="length" if resp.stop_reason == "max_tokens" else "stop",
        input_tokens=int(usage.input_tokens or 0) + cache_read + cache_write,
        output_tokens=int(usage.output_tokens or 0),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        model=resp.model or model,
        raw=resp,
    )
