"""OpenAI through the official `openai` SDK (chat completions).

Structured output: the `json_schema` response format, `strict` when the schema meets OpenAI's
strict subset (every object closed with `additionalProperties: false` and every property
required, no `allOf`/`not`/conditionals...), else JSON mode (`{"type": "json_object"}`); the llm
step validates the reply either way. Usage: `prompt_tokens`, `completion_tokens`, and the cached
prefix from `prompt_tokens_details.cached_tokens` (billed at the cached-input price).

SDK retries are off (`max_retries: 0`): the engine decides where a failed call goes next.
Options (tier entry `options:`): `api_key_env` (default OPENAI_API_KEY), `base_url`, `timeout`
(seconds, 60), `max_retries` (0), `organization`, `send_temperature` (true; false for models
that reject it).

Errors are mapped once, in `map_error`: 401/403 -> AuthenticationError, 429 -> RateLimitError
(with `retry-after`), timeouts -> ProviderTimeoutError, connection errors and 5xx ->
ProviderUnavailableError, context-length 400s -> ContextWindowError, any other -> ProviderError.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any


import openai

from engine.errors import (
    AuthenticationError,
    ContextWindowError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from engine.providers.base import Completion, CompletionRequest
from engine.providers.keys import api_key, redact, retry_after
from engine.providers.loops import LoopClients

_STRICT_UNSUPPORTED = {"allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                       "patternProperties", "unevaluatedProperties", "propertyNames", "oneOf",
                       "minProperties", "maxProperties"}
_CONTEXT_MARKERS = ("context_length_exceeded", "maximum context length", "context window",
                    "too many tokens", "exceeds the context")


def strict_compatible(schema: Any, root: bool = True) -> bool:
    """Whether OpenAI's strict structured outputs accept `schema` as is."""
    if not isinstance(schema, dict):
        return False
    if root and schema.get("type") != "object":
        return False
    if _STRICT_UNSUPPORTED & schema.keys():
        return False
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
            return False
        if not all(strict_compatible(p, False) for p in props.values()):
            return False
    children: list[Any] = []
    if isinstance(schema.get("items"), dict):
        children.append(schema["items"])
    children += schema.get("anyOf", [])
    for defs in ("$defs", "definitions"):
        children += list((schema.get(defs) or {}).values())
    return all(strict_compatible(c, False) for c in children)


def response_format(schema: dict[str, Any] | None, form: str = "json_schema") -> dict[str, Any] | None:
    """The `response_format` for a schema in one of the forms servers accept:
    `json_schema` (OpenAI, vLLM, llama-server, Ollama), `json_object_schema` (llama_cpp.server:
    `{"type": "json_object", "schema": ...}`), `json_object` (plain JSON mode), `none`."""
    if schema is None or form == "none":
        return None
    if form == "json_object":
        return {"type": "json_object"}
    if form == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if strict_compatible(schema):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}
    if form == "json_schema_loose":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": False}}
    return {"type": "json_object"}


def map_error(e: openai.OpenAIError, provider: str, model: str, key: str | None = None) -> ProviderError:
    """Translate an `openai` SDK error into the engine's error tree (the one place we do)."""
    kw = {"provider": provider, "model": model}
    status = getattr(e, "status_code", None)
    text = redact(f"{provider}: {f'HTTP {status}: ' if status else ''}{getattr(e, 'message', None) or e}", key)
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return AuthenticationError(text, **kw)
    if isinstance(e, openai.RateLimitError):
        return RateLimitError(text, retry_after=retry_after(e.response.headers), **kw)
    if isinstance(e, openai.APITimeoutError):
        return ProviderTimeoutError(text, **kw)
    if isinstance(e, openai.APIConnectionError):
        return ProviderUnavailableError(text, **kw)
    if isinstance(e, openai.APIStatusError):
        body = str(e.body or "") + " " + str(e.message)
        if status in (400, 413, 422) and any(m in body.lower() for m in _CONTEXT_MARKERS):
            return ContextWindowError(text, **kw)
        if status is not None and status >= 500:
            return ProviderUnavailableError(text, **kw)
    return ProviderError(text, **kw)


class OpenAIProvider:
    """Chat completions through the `openai` SDK. `http_client` (a client of the HTTP library the
    SDK uses: `httpx2` for openai 3, `httpx` for openai 2) may be injected, e.g. with a
    `MockTransport` in tests; `async_http_client` likewise for `acomplete` (the SDK's
    `AsyncOpenAI`). With only a sync `http_client` injected, `acomplete` runs `complete` on a
    worker thread, so both paths use the injected transport."""

    name = "openai"
    key_env: str | None = "OPENAI_API_KEY"
    token_param = "max_completion_tokens"

    def __init__(self, http_client: Any = None, async_http_client: Any = None):
        self.http_client = http_client
        self.async_http_client = async_http_client
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._async_clients = LoopClients()

    def base_url(self, options: dict[str, Any]) -> str | None:
        return options.get("base_url")

    def client(self, options: dict[str, Any], model: str) -> tuple[Any, str | None]:
        """The sync SDK client for these options, built once per key,
        base URL, timeout, retries and organization."""
        key = api_key(self.name, options, self.key_env, model)
        base_url = self.base_url(options)
        timeout = float(options.get("timeout", 60))
        retries = int(options.get("max_retries", 0))
        cache_key = (key, base_url, timeout, retries, options.get("organization"))
        client = self._clients.get(cache_key)  # a dict read is atomic: no lock on the hot path
        if client is None:
            with self._lock:
                client = self._clients.get(cache_key)
                if client is None:
                    cls = openai.OpenAI
                    client = cls(api_key=key or "not-needed", base_url=base_url, timeout=timeout,
                                 max_retries=retries, organization=options.get("organization"),
                                 http_client=self.http_client)
                    self._clients[cache_key] = client
        return client, key

    async def aclient(self, options: dict[str, Any], model: str) -> tuple[Any, str | None]:
        """The `AsyncOpenAI` client for these options on the running event loop (see
        `engine.providers.loops`: one per loop, closed when the loop shuts down)."""
        key = api_key(self.name, options, self.key_env, model)
        base_url = self.base_url(options)
        timeout = float(options.get("timeout", 60))
        retries = int(options.get("max_retries", 0))
        cache_key = (key, base_url, timeout, retries, options.get("organization"))
        client = await self._async_clients.get(cache_key, lambda: openai.AsyncOpenAI(
            api_key=key or "not-needed", base_url=base_url, timeout=timeout, max_retries=retries,
            organization=options.get("organization"), http_client=self.async_http_client),
            owned=self.async_http_client is None)
        return client, key

    def structured_form(self, request: CompletionRequest) -> str:
        return "json_schema"

    def build(self, request: CompletionRequest, form: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages,
                                  self.token_param: request.max_tokens}
        if request.options.get("send_temperature", True):
            kwargs["temperature"] = request.temperature
        fmt = response_format(request.schema, form)
        if fmt is not None:
            kwargs["response_format"] = fmt
        if request.logprobs and request.options.get("logprobs", True):
            kwargs.update(logprobs=True, top_logprobs=10)
        return kwargs

    def send(self, request: CompletionRequest, form: str) -> Completion:
        client, key = self.client(request.options, request.model)
        try:
            resp = client.chat.completions.create(**self.build(request, form))
        except openai.OpenAIError as e:
            raise map_error(e, self.name, request.model, key) from e
        except json.JSONDecodeError as e:  # a 200 whose body is not JSON (a proxy's error page, a cut stream)
            raise ProviderUnavailableError(f"{self.name}: malformed response body: {e}", provider=self.name,
                                           model=request.model) from e
        try:
            return parse_chat_completion(resp, request.model)
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            raise ProviderUnavailableError(f"{self.name}: unexpected response shape: {e}", provider=self.name,
                                           model=request.model) from e

    async def asend(self, request: CompletionRequest, form: str) -> Completion:
        """`send` through the SDK's async client, on the caller's event loop."""
        client, key = await self.aclient(request.options, request.model)
        try:
            resp = await client.chat.completions.create(**self.build(request, form))
        except openai.OpenAIError as e:
            raise map_error(e, self.name, request.model, key) from e
        except json.JSONDecodeError as e:
            raise ProviderUnavailableError(f"{self.name}: malformed response body: {e}", provider=self.name,
                                           model=request.model) from e
        try:
            return parse_chat_completion(resp, request.model)
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            raise ProviderUnavailableError(f"{self.name}: unexpected response shape: {e}", provider=self.name,
                                           model=request.model) from e

    def async_native(self) -> bool:
        """False when a sync transport was injected without an async one (then `acomplete` runs
        `complete` on a worker thread, through that transport)."""
        return self.http_client is None or self.async_http_client is not None

    def complete(self, request: CompletionRequest) -> Completion:
        return self.send(request, self.structured_form(request))

    async def acomplete(self, request: CompletionRequest) -> Completion:
        if not self.async_native():
            return await asyncio.to_thread(self.complete, request)
        return await self.asend(request, self.structured_form(request))


def parse_chat_completion(resp: Any, model: str) -> Completion:
    if not resp.choices:
        raise ProviderError("empty reply: no choices", model=model)
    choice = resp.choices[0]
    usage = resp.usage
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    return Completion(
        text=choice.message.content or "",
        finish_reason="length" if choice.finish_reason == "length" else "stop",
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cached_input_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        model=resp.model or model,
        raw=resp,
        logprobs=_logprobs(getattr(choice, "logprobs", None)),
    )


def _logprobs(value: Any) -> list[dict[str, Any]] | None:
    """`choices[0].logprobs.content` as plain dicts ({token, logprob, top_logprobs})."""
    content = getattr(value, "content", None) if value is not None else None
    if not content:
        return None
    return [{"token": t.token, "logprob": t.logprob,
             "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in (t.top_logprobs or [])]}
            for t in content]
