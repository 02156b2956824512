"""The provider protocol: one small method, `complete(request) -> Completion`, and optionally its
async twin `async def acomplete(request) -> Completion` (httpx's `handle_request` /
`handle_async_request`). Async runs (`arun_workflow`, `Engine.arun`) await `acomplete` on the
caller's event loop; a provider with only `complete` still works there, on a worker thread (the
one place that wraps it: `engine.providers.calls.acomplete`).

A provider is an authenticated client for one backend (llama.cpp, OpenAI, Anthropic, ...). It
receives the chat messages, the JSON Schema the reply must satisfy, and the token cap; it returns
the raw text with usage and the finish reason. It never validates: the llm step does that, the same
way for every provider. Adapters translate their SDK's errors into `engine.errors.ProviderError`
subclasses in one place, with `raise ... from`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    """The model name within the provider (the part after `provider:`)."""
    messages: list[dict[str, str]]
    """Chat messages, static content first: system, then the rendered prompt, then any re-asks."""
    max_tokens: int
    schema: dict[str, Any] | None = None
    temperature: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    """Provider options from the tier config (paths, base_url, structured-output form, ...)."""
    logprobs: bool = False
    """Return token log-probabilities when the backend can (confidence gating)."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    """'stop' when the model ended its reply; 'length' when the token cap cut it off."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    """Prompt tokens read from the provider's prefix cache (part of `input_tokens`)."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's cache on this call (Anthropic; part of `input_tokens`)."""
    model: str = ""
    """The model that actually answered, as the provider reports it."""
    raw: Any = None
    logprobs: list[dict[str, Any]] | None = None
    """Per-token log-probabilities in OpenAI's chat format ({token, logprob, top_logprobs}), when asked."""
    confidence: float | None = None
    """A confidence the provider computed itself (else derived from `logprobs`)."""
    batch: str | None = None
    """`<provider batch id>/<custom_id>` when a provider batch answered (billed at the batch rate)."""
    prepaid: bool = False
    """A provider-batch answer an interrupted run already logged and paid for, replayed on resume."""


@runtime_checkable
class Provider(Protocol):
    name: str

    def complete(self, request: CompletionRequest) -> Completion: ...


@runtime_checkable
class AsyncProvider(Provider, Protocol):
    """A provider that is async-native as well (the built-in cloud and local providers are)."""

    async def acomplete(self, request: CompletionRequest) -> Completion: ...
