"""Wire-format replies and a mock transport for the cloud SDKs (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

WIRE = Path(__file__).parent / "providers" / "wire"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((WIRE / name).read_text())


def sdk_http(sdk: ModuleType) -> ModuleType:
    """The HTTP library an SDK is built on (`httpx2` for openai 3 / anthropic 2, else `httpx`)."""
    import importlib

    return importlib.import_module(sdk.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


class MockServer:
    """Answers SDK requests with `handler(request_json, request) -> response`; keeps requests."""

    def __init__(self, sdk: ModuleType, handler: Callable[[dict[str, Any], Any], Any]):
        self.http = sdk_http(sdk)
        self.handler = handler
        self.requests: list[Any] = []
        self.bodies: list[dict[str, Any]] = []
        self.client = self.http.Client(transport=self.http.MockTransport(self._handle))

    def _handle(self, request: Any) -> Any:
        body = json.loads(request.content or b"{}")
        self.requests.append(request)
        self.bodies.append(body)
        return self.handler(body, request)

    def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
        return self.http.Response(status, json=payload, headers=headers or {})
