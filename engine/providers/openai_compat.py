"""Any server that speaks the OpenAI chat API (vLLM, Ollama, llama.cpp's servers) via `base_url`.

Servers disagree on the structured-output form. `options.structured_output` picks it per server:

- `json_schema`: `{"type": "json_schema", "json_schema": {...}}` (vLLM, llama.cpp's
  `llama-server`, Ollama);
- `json_object_schema`: `{"type": "json_object", "schema": {...}}` (llama-cpp-python's
  `llama_cpp.server`, which answers `json_schema` with HTTP 500 "Input should be 'text' or
  'json_object'");
- `json_object`: plain JSON mode; `none`: the prompt alone;
- `auto` (the default): `json_schema` first; when the server rejects the response format, the
  `json_object_schema` form, remembered for that `base_url` for the rest of the process.

The llm step validates the reply whatever the form. The key is optional: `options.api_key_env`
names the variable when the server wants one. Options: `base_url` (required), `api_key_env`,
`structured_output`, `timeout`, `max_retries`, `send_temperature`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from engine.errors import AuthenticationError, ConfigError, ProviderError
from engine.providers.base import Completion, CompletionRequest
from engine.providers.openai import OpenAIProvider

FORMS = ("auto", "json_schema", "json_schema_loose", "json_object_schema", "json_object", "none")
_REJECTS_FORMAT = ("json_object", "response_format", "json_schema")


class OpenAICompatibleProvider(OpenAIProvider):
    name = "openai-compatible"
    key_env = None
    token_param = "max_tokens"

    def __init__(self, http_client: Any = None):
        super().__init__(http_client)
        self._learned: dict[str, str] = {}
        self._learned_lock = threading.Lock()

    def base_url(self, options: dict[str, Any]) -> str | None:
        url = options.get("base_url")
        if not url:
            raise ConfigError("openai-compatible: the tier entry needs options.base_url "
                              "(e.g. http://127.0.0.1:8000/v1)")
        return str(url)

    def structured_form(self, request: CompletionRequest) -> str:
        form = str(request.options.get("structured_output", "auto"))
        if form not in FORMS:
            raise ConfigError(f"openai-compatible: structured_output '{form}' is not one of {', '.join(FORMS)}")
        if form == "auto":
            with self._learned_lock:
                return self._learned.get(self.base_url(request.options) or "", "auto")
        return form

    def _form(self, request: CompletionRequest) -> str:
        form = self.structured_form(request)
        if form in ("json_schema", "auto") and request.schema is None:
            form = "none"
        return "json_schema_loose" if form == "json_schema" else form  # servers constrain to any schema

    def _learn(self, request: CompletionRequest, form: str) -> None:
        with self._learned_lock:
            self._learned[self.base_url(request.options) or ""] = form

    def complete(self, request: CompletionRequest) -> Completion:
        form = self._form(request)
        if form != "auto":
            return self.send(request, form)
        try:
            completion = self.send(request, "json_schema_loose")
        except ProviderError as e:
            if isinstance(e, AuthenticationError) or not any(m in str(e) for m in _REJECTS_FORMAT):
                raise
            completion = self.send(request, "json_object_schema")
            self._learn(request, "json_object_schema")
        else:
            self._learn(request, "json_schema_loose")
        return completion

    async def acomplete(self, request: CompletionRequest) -> Completion:
        if not self.async_native():
            return await asyncio.to_thread(self.complete, request)
        form = self._form(request)
        if form != "auto":
            return await self.asend(request, form)
        try:
            completion = await self.asend(request, "json_schema_loose")
        except ProviderError as e:
            if isinstance(e, AuthenticationError) or not any(m in str(e) for m in _REJECTS_FORMAT):
                raise
            completion = await self.asend(request, "json_object_schema")
            self._learn(request, "json_object_schema")
        else:
            self._learn(request, "json_schema_loose")
        return completion
