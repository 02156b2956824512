"""A scripted provider for tests and offline examples.

Replies come from a queue (`enqueue`), or from a `responder(request) -> str | Completion`
callable when the queue is empty. Every request is kept in `requests` for assertions.
Tier config may seed replies: `{model: "fake:x", options: {replies: ['{"a": 1}']}}`, and
simulate a cloud call's latency: `options: {delay_ms: 50}` (each call sleeps that long).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Callable

from engine.errors import ProviderError
from engine.providers.base import Completion, CompletionRequest

Reply = str | Completion | ProviderError | dict[str, Any]


class FakeProvider:
    name = "fake"

    def __init__(self, responder: Callable[[CompletionRequest], Reply] | None = None):
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.responder = responder
        self.requests: list[CompletionRequest] = []

    def enqueue(self, *replies: Reply) -> FakeProvider:
        """Queue replies: text, a dict (sent as JSON), a Completion, or an error to raise."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            self.requests.append(request)
            reply: Reply | None = self._queue.popleft() if self._queue else None
            if reply is None and request.options.get("replies"):
                seeded = request.options["replies"]
                reply = seeded[(len(self.requests) - 1) % len(seeded)]
        delay = request.options.get("delay_ms")
        if delay:
            time.sleep(float(delay) / 1000)
        if reply is None and self.responder is not None:
            reply = self.responder(request)
        if reply is None:
            raise ProviderError("fake provider: no reply queued", provider="fake", model=request.model)
        if isinstance(reply, ProviderError):
            raise reply
        if isinstance(reply, Completion):
            return reply
        text = reply if isinstance(reply, str) else json.dumps(reply)
        tokens_in = sum(len(m["content"].split()) for m in request.messages)
        words = text.split()
        finish = "stop"
        if len(words) > request.max_tokens:  # emulate the cap, a word a token
            text, finish = " ".join(words[: request.max_tokens]), "length"
        return Completion(text=text, finish_reason=finish, input_tokens=tokens_in,
                          output_tokens=min(len(words), request.max_tokens), model=request.model)
