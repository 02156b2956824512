"""`engine serve`'s guards, as ASGI middleware and request helpers (see engine.http).

- **Body limit**: a request body over `max_body` bytes (default 1 MB) is refused with 413, from
  its Content-Length or while it streams in, before anything is parsed or stored.
- **Bearer token**: when a token is set (`ENGINE_SERVE_TOKEN`), every request needs
  `Authorization: Bearer <token>` (compared in constant time), else 401: an exposed port is not
  an open LLM proxy. The review console (`/ui`, engine.ui) also accepts the session cookie its
  login page sets after a person typed the same token.
- **Tenant**: read from a header (`X-Engine-Tenant` by default); at most 128 characters of
  letters, digits and `._:@-`, else 400.
- **Bodies**: parsed as JSON at most 64 levels deep, without NaN/Infinity; lone surrogates in
  strings become U+FFFD before anything reaches a workflow or the store.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Awaitable, Callable

from engine.store.sqlite import clean_text
from engine.strict_json import MAX_DEPTH

DEFAULT_MAX_BODY = 1024 * 1024
TENANT_HEADER = "X-Engine-Tenant"
_TENANT = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BadRequest(Exception):
    """A request the guards refuse: carries the HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(detail)


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over `max_body` bytes with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"the request body is over the limit of {self.max_body:,} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _reply(send, 400, "invalid Content-Length")
                if declared > self.max_body:
                    return await _reply(send, 413, too_big)
        # Read the whole body first (at most max_body bytes), then replay it to the app.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                return await _reply(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def session_value(token: str) -> str:
    """What the review console's session cookie holds once a person logged in with the token: a
    digest of it, never the token itself."""
    return hmac.new(token.encode(), b"engine-ui-session", "sha256").hexdigest()


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> bytes:
    for key, value in headers:
        if key == b"cookie":
            for part in value.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == name.encode():
                    return v
    return b""


class BearerAuth:
    """Every request needs `Authorization: Bearer <token>`, or (under the review console) the
    session cookie `cookie` that its login page sets; paths starting with one of `public` (the
    login page, static assets) are open. A page (GET under `login_prefix`) without either is
    redirected to `login`."""

    def __init__(self, app: ASGIApp, token: str, *, cookie: str | None = None, public: tuple[str, ...] = (),
                 login: str | None = None, login_prefix: str = "/ui"):
        self.app = app
        self.login = login
        self.login_prefix = login_prefix
        self.token = token.encode()
        self.cookie = cookie
        self.session = session_value(token).encode()
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.public and path.startswith(self.public):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if self.cookie and not given and path.startswith(self.login_prefix) and hmac.compare_digest(_cookie(scope.get("headers", []), self.cookie),
                                                             self.session):
            return await self.app(scope, receive, send)
        if not hmac.compare_digest(given, self.token):
            if self.login and scope.get("method") == "GET" and path.startswith(self.login_prefix):
                return await _reply(send, 303, "log in first", [(b"location", self.login.encode())])
            return await _reply(send, 401, "missing or wrong bearer token (set by ENGINE_SERVE_TOKEN)",
                                [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


def tenant_from(headers: Any, header: str = TENANT_HEADER) -> str | None:
    value = headers.get(header)
    if value is None or value == "":
        return None
    if not _TENANT.fullmatch(value):
        raise BadRequest(400, f"{header} must be 1 to 128 characters of letters, digits and ._:@-")
    return str(value)


def parse_body(raw: bytes) -> Any:
    """The request's JSON, strict and sanitised (see the module docstring), or BadRequest 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "the request body is not UTF-8") from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise BadRequest(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    return sanitise(value)


def sanitise(value: Any) -> Any:
    """Strings made storable (lone surrogates -> U+FFFD); nesting over MAX_DEPTH refused."""
    def walk(item: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise BadRequest(400, f"the request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            return clean_text(item)
        if isinstance(item, list):
            return [walk(v, depth + 1) for v in item]
        if isinstance(item, dict):
            return {clean_text(k): walk(v, depth + 1) for k, v in item.items()}
        return item

    return walk(value, 1)


def install(app: Any, *, max_body: int = DEFAULT_MAX_BODY, token: str | None = None,
            **auth: Any) -> Any:
    """Wrap a FastAPI app in the guards; the token check runs first, then the body limit.
    `auth`: BearerAuth's cookie, public and login (the review console's login)."""
    app.add_middleware(BodyLimit, max_body=max_body)
    if token:
        app.add_middleware(BearerAuth, token=token, **auth)
    return app
