"""The batch APIs of the providers that have one, behind one small protocol.

    submit(provider, entry, requests, tag) -> (provider batch id, input file id)
    find(provider, entry, tag, custom_ids=, since=, known=)
                                           -> the batch a killed run created but never recorded
    poll(provider, entry, job id)          -> JobStatus (the provider's status word, counts, ended?)
    results(provider, entry, status)       -> one LineResult per result line
    completion(line, request)              -> the Completion in a `succeeded` line
    cancel(provider, entry, job id)

`openai` (Batch API: a JSONL file uploaded with purpose `batch`, a batch over
`/v1/chat/completions`, the `output_file_id` and `error_file_id` files) and `anthropic`
(Message Batches: `/v1/messages/batches`, `processing_status`, the JSONL at `results_url`) are
built in; `register_batch_api` adds others. A provider without one (`openai-compatible`,
`llamacpp`, ...) stays real-time in a `--provider-batch` run.

Every request line is built by the provider's own real-time request builder, and every answer is
parsed by its real-time parser, so a batched call asks exactly what a real-time call would. SDK
errors are mapped by the provider's `map_error`. A result line that cannot be read (not JSON, no
`custom_id`, a body of the wrong shape) is `malformed`; its request falls back to real time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from engine.errors import ProviderError, ProviderUnavailableError
from engine.providers.base import Completion, CompletionRequest
from engine.spec.models import ModelEntry

RESULT_STATES = ("succeeded", "errored", "expired", "canceled", "malformed", "missing")
"""What became of one request: answered, failed at the provider, expired or cancelled before it
ran, an unreadable result line, or no result line at all."""


@dataclass
class JobStatus:
    status: str
    """The provider's own word: validating | in_progress | finalizing | completed | failed | expired |
    cancelling | cancelled (OpenAI); in_progress | canceling | ended (Anthropic)."""
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    error: str | None = None
    """Why the whole batch failed (OpenAI `errors`), if it did."""
    job_id: str = ""


@dataclass
class LineResult:
    custom_id: str | None
    state: str
    """succeeded | errored | expired | canceled | malformed"""
    line: Any = None
    error: str | None = None


class BatchAPI(Protocol):
    max_requests: int

    def submit(self, provider: Any, entry: ModelEntry, requests: list[tuple[str, CompletionRequest]],
               tag: dict[str, str]) -> tuple[str, str | None]: ...

    def find(self, provider: Any, entry: ModelEntry, tag: dict[str, str], *, custom_ids: list[str],
             since: str | None = None, known: set[str] | frozenset[str] = frozenset()) -> str | None: ...

    def poll(self, provider: Any, entry: ModelEntry, job_id: str) -> JobStatus: ...

    def results(self, provider: Any, entry: ModelEntry, status: JobStatus) -> list[LineResult]: ...

    def completion(self, line: Any, request: CompletionRequest) -> Completion: ...

    def cancel(self, provider: Any, entry: ModelEntry, job_id: str) -> None: ...


def _text(content: Any) -> str:
    for attr in ("text",):
        value = getattr(content, attr, None)
        if isinstance(value, str):
            return value
    if isinstance(content, bytes):
        return content.decode("utf-8")
    read = getattr(content, "read", None)
    if callable(read):
        data = read()
        return data.decode("utf-8") if isinstance(data, bytes) else str(data)
    return str(content)


def _lines(text: str, classify: Callable[[dict[str, Any]], LineResult]) -> list[LineResult]:
    out: list[LineResult] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError as e:
            out.append(LineResult(None, "malformed", raw, f"not JSON: {e}"))
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            out.append(LineResult(None, "malformed", line, "no custom_id"))
            continue
        try:
            out.append(classify(line))
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            out.append(LineResult(line["custom_id"], "malformed", line, f"unexpected shape: {e}"))
    return out


# --- OpenAI ---------------------------------------------------------------------------------------


class OpenAIBatchAPI:
    """OpenAI's Batch API over `/v1/chat/completions`, with the provider's SDK client."""

    max_requests = 50_000
    endpoint = "/v1/chat/completions"

    def _client(self, provider: Any, entry: ModelEntry) -> tuple[Any, str | None]:
        return provider.client(entry.options, entry.model_name)  # type: ignore[no-any-return]

    def _call(self, provider: Any, entry: ModelEntry, fn: Callable[[Any], Any]) -> Any:
        import openai

        from engine.providers.openai import map_error

        client, key = self._client(provider, entry)
        try:
            return fn(client)
        except openai.OpenAIError as e:
            raise map_error(e, provider.name, entry.model_name, key) from e
        except json.JSONDecodeError as e:
            raise ProviderUnavailableError(f"{provider.name}: malformed response body: {e}", provider=provider.name,
                                           model=entry.model_name) from e

    def request_line(self, provider: Any, custom_id: str, request: CompletionRequest) -> dict[str, Any]:
        body = provider.build(request, provider.structured_form(request))
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}

    def submit(self, provider: Any, entry: ModelEntry, requests: list[tuple[str, CompletionRequest]],
               tag: dict[str, str]) -> tuple[str, str | None]:
        data = "".join(json.dumps(self.request_line(provider, cid, r), ensure_ascii=False) + "\n"
                       for cid, r in requests).encode("utf-8")
        upload = self._call(provider, entry, lambda c: c.files.create(
            file=(f"engine-batch-{tag.get('engine_job', '')}.jsonl", data, "application/jsonl"), purpose="batch"))
        batch = self._call(provider, entry, lambda c: c.batches.create(
            input_file_id=upload.id, endpoint=self.endpoint, completion_window="24h", metadata=tag))
        return str(batch.id), str(upload.id)

    def find(self, provider: Any, entry: ModelEntry, tag: dict[str, str], *, custom_ids: list[str],
             since: str | None = None, known: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The batch whose metadata is `tag`, among those created since the intent was written."""
        for batch in self._call(provider, entry, lambda c: _recent(c.batches.list(limit=100), since)):
            metadata = getattr(batch, "metadata", None) or {}
            if all(metadata.get(k) == v for k, v in tag.items()):
                return str(batch.id)
        return None

    def poll(self, provider: Any, entry: ModelEntry, job_id: str) -> JobStatus:
        batch = self._call(provider, entry, lambda c: c.batches.retrieve(job_id))
        counts = batch.request_counts
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        return JobStatus(
            status=batch.status, job_id=job_id,
            ended=batch.status in ("completed", "failed", "expired", "cancelled"),
            counts={"total": getattr(counts, "total", 0) or 0, "completed": getattr(counts, "completed", 0) or 0,
                    "failed": getattr(counts, "failed", 0) or 0} if counts is not None else {},
            output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
            error="; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors) or None)

    def results(self, provider: Any, entry: ModelEntry, status: JobStatus) -> list[LineResult]:
        out: list[LineResult] = []
        for file_id in (status.output_file_id, status.error_file_id):
            if file_id:
                out += _lines(_text(self._download(provider, entry, file_id)), self._classify)
        return out

    def _download(self, provider: Any, entry: ModelEntry, file_id: str) -> Any:
        return self._call(provider, entry, lambda c: c.files.content(file_id))

    @staticmethod
    def _classify(line: dict[str, Any]) -> LineResult:
        cid = line["custom_id"]
        error = line.get("error")
        if error:
            code = error.get("code") if isinstance(error, dict) else None
            state = {"batch_expired": "expired", "batch_cancelled": "canceled"}.get(str(code), "errored")
            return LineResult(cid, state, line, f"{code}: {error.get('message') if isinstance(error, dict) else error}")
        response = line["response"]
        if not isinstance(response, dict):
            raise TypeError("response is not an object")
        status = response.get("status_code")
        if status != 200:
            body = response.get("body") or {}
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            return LineResult(cid, "errored", line, f"HTTP {status}: {message or body}")
        if not isinstance(response.get("body"), dict) or not response["body"].get("choices"):
            raise ValueError("the response body has no choices")
        return LineResult(cid, "succeeded", line)

    def completion(self, line: Any, request: CompletionRequest) -> Completion:
        from openai.types.chat import ChatCompletion

        from engine.providers.openai import parse_chat_completion

        try:  # the SDK's own model of a chat completion, as in real time
            return parse_chat_completion(ChatCompletion.model_validate(line["response"]["body"]), request.model)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError, ProviderError) as e:
            raise ValueError(f"unexpected response shape: {e}") from None

    def cancel(self, provider: Any, entry: ModelEntry, job_id: str) -> None:
        self._call(provider, entry, lambda c: c.batches.cancel(job_id))


# --- Anthropic ------------------------------------------------------------------------------------


class AnthropicBatchAPI:
    """Anthropic's Message Batches, with the provider's SDK client."""

    max_requests = 100_000

    def _call(self, provider: Any, entry: ModelEntry, fn: Callable[[Any], Any]) -> Any:
        import anthropic

        from engine.providers.anthropic import map_error

        client, key = provider.client(entry.options, entry.model_name)
        try:
            return fn(client)
        except anthropic.AnthropicError as e:
            raise map_error(e, entry.model_name, key) from e
        except json.JSONDecodeError as e:
            raise ProviderUnavailableError(f"anthropic: malformed response body: {e}", provider="anthropic",
                                           model=entry.model_name) from e

    def request_line(self, provider: Any, custom_id: str, request: CompletionRequest) -> dict[str, Any]:
        params, _wrapped = provider.build(request)
        return {"custom_id": custom_id, "params": params}

    def submit(self, provider: Any, entry: ModelEntry, requests: list[tuple[str, CompletionRequest]],
               tag: dict[str, str]) -> tuple[str, str | None]:
        lines = [self.request_line(provider, cid, r) for cid, r in requests]
        batch = self._call(provider, entry, lambda c: c.messages.batches.create(requests=lines))
        return str(batch.id), None

    def find(self, provider: Any, entry: ModelEntry, tag: dict[str, str], *, custom_ids: list[str],
             since: str | None = None, known: set[str] | frozenset[str] = frozenset()) -> str | None:
        """Message Batches carry no metadata, and a listed batch shows its counts, not its custom
        ids. Ours is among the batches created since the intent was written (less a clock skew)
        that no ledger job holds (`known`) and have as many requests: an ended one is ours when
        its result lines carry exactly our custom ids; otherwise the first one created still
        running is taken (its result lines are matched by custom id when collected, so a batch
        that was not ours answers nothing and its requests go out in real time)."""
        if not custom_ids:
            return None
        ours = set(custom_ids)
        running: list[tuple[Any, str]] = []
        for batch in self._call(provider, entry, lambda c: _recent(c.messages.batches.list(limit=100), since)):
            if str(batch.id) in known:
                continue
            counts = batch.request_counts
            total = sum(int(getattr(counts, k, 0) or 0)
                        for k in ("processing", "succeeded", "errored", "canceled", "expired"))
            if total != len(ours):
                continue
            if batch.processing_status != "ended":
                running.append((_created(batch), str(batch.id)))
                continue
            status = JobStatus(status="ended", ended=True, results_url=batch.results_url, job_id=str(batch.id))
            if {line.custom_id for line in self.results(provider, entry, status)} == ours:
                return str(batch.id)
        return min(running)[1] if running else None

    def poll(self, provider: Any, entry: ModelEntry, job_id: str) -> JobStatus:
        batch = self._call(provider, entry, lambda c: c.messages.batches.retrieve(job_id))
        counts = batch.request_counts
        return JobStatus(
            status=batch.processing_status, job_id=job_id, ended=batch.processing_status == "ended",
            counts={k: int(getattr(counts, k, 0) or 0)
                    for k in ("processing", "succeeded", "errored", "canceled", "expired")},
            results_url=batch.results_url)

    def results(self, provider: Any, entry: ModelEntry, status: JobStatus) -> list[LineResult]:
        if not status.results_url:
            return []
        url = status.results_url

        def fetch(client: Any) -> str:  # the raw JSONL: one unreadable line must not hide the others
            return str(client.get(url, cast_to=str, options={"headers": {"Accept": "application/binary"}}))

        return _lines(self._call(provider, entry, fetch), self._classify)

    @staticmethod
    def _classify(line: dict[str, Any]) -> LineResult:
        cid = line["custom_id"]
        result = line["result"]
        kind = result["type"]
        if kind == "succeeded":
            message = result["message"]
            if not isinstance(message, dict) or not isinstance(message.get("content"), list):
                raise ValueError("the message has no content")
            return LineResult(cid, "succeeded", line)
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            return LineResult(cid, "errored", line, f"{error.get('type')}: {error.get('message')}")
        if kind in ("canceled", "expired"):
            return LineResult(cid, kind, line, kind)
        raise ValueError(f"unknown result type {kind!r}")

    def completion(self, line: Any, request: CompletionRequest) -> Completion:
        from anthropic.types import Message

        from engine.providers.anthropic import parse_message, tool_schema

        wrapped = request.schema is not None and tool_schema(request.schema)[1]
        try:  # the SDK's own model of a message, as in real time
            return parse_message(Message.model_validate(line["result"]["message"]), request.model, wrapped)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
            raise ValueError(f"unexpected message shape: {e}") from None

    def cancel(self, provider: Any, entry: ModelEntry, job_id: str) -> None:
        self._call(provider, entry, lambda c: c.messages.batches.cancel(job_id))


SKEW_S = 600.0
"""How far a provider's clock may lag ours when recent batches are listed (`find`)."""


def _created(batch: Any) -> float:
    """A listed batch's creation time as epoch seconds (OpenAI: an int; Anthropic: a datetime)."""
    created = getattr(batch, "created_at", None)
    if isinstance(created, datetime):
        return created.timestamp()
    if isinstance(created, str):
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    return float(created or 0)


def _recent(page: Any, since: str | None, most: int = 2000) -> list[Any]:
    """The listed batches (newest first, across pages) created since `since` (an ISO time) less
    `SKEW_S`; without `since`, the first page."""
    if since is None:
        return list(getattr(page, "data", []) or [])
    floor = datetime.fromisoformat(since).timestamp() - SKEW_S
    out: list[Any] = []
    for batch in page:  # the SDK's page iterator fetches the next pages
        if _created(batch) < floor or len(out) >= most:
            break
        out.append(batch)
    return out


_APIS: dict[str, BatchAPI] = {"openai": OpenAIBatchAPI(), "anthropic": AnthropicBatchAPI()}


def register_batch_api(provider: str, api: BatchAPI) -> None:
    """Give the provider registered as `provider` a batch API (a plugin's, or a test's)."""
    _APIS[provider] = api


def unregister_batch_api(provider: str) -> None:
    _APIS.pop(provider, None)


def batch_api(provider: str) -> BatchAPI | None:
    """The batch API of `provider`, or None when it has none (it stays real-time)."""
    return _APIS.get(provider)
