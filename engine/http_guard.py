"""`engine serve`'s guards, as ASGI middleware and request helpers (see engine.http).

- **Body limit**: a request body over `max_body` bytes (default 1 MB) is refused with 413, from
  its Content-Length or while it streams in, before anything is parsed or stored.
- **Host**: the `Host` header must name this server: by default a localhost name (`localhost`,
  `127.0.0.1`, `[::1]`, any port), else 421 (400 without one). A web page whose DNS name was
  rebound to 127.0.0.1 sends its own name, so it can neither read a page nor post to the server.
- **Bearer token**: when a token is set (`ENGINE_SERVE_TOKEN`), every request needs
  `Authorization: Bearer <token>` (compared in constant time), else 401: an exposed port is not
  an open LLM proxy. Paths under `exempt` (the review console, engine.ui) check it themselves,
  accepting the session cookie its login page sets too.
- **Content type**: a POST, PUT, PATCH or DELETE outside `exempt` must say `application/json`,
  else 415, body or not: a page on another site can send `text/plain` or form bodies (and empty
  ones) without asking the browser first, never JSON.
- **Tenant**: read from a header (`X-Engine-Tenant` by default); at most 128 characters of
  letters, digits and `._:@-`, else 400.
- **Bodies**: parsed as JSON at most 64 levels deep (422 deeper), without
  NaN/Infinity; lone surrogates in strings become U+FFFD before anything reaches a workflow or
  the store.
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
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TENANT = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_PORT = re.compile(r":[0-9]{1,5}")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,252})|\[[0-9a-f:.]{2,45}\]")

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


def normal_host(value: str) -> str:
    """A Host header's (or an allow-list entry's) name: lower case, without port or final dot;
    an IPv6 literal keeps its brackets (`::1` and `[::1]:8000` both give `[::1]`)."""
    value = value.strip().lower()
    if value.startswith("[") and "]" in value:
        end = value.index("]") + 1
        name, port = value[:end], value[end:]
    elif value.count(":") > 1:  # a bare IPv6 literal (an allow-list entry)
        name, port = f"[{value}]", ""
    else:
        name, colon, number = value.partition(":")
        port = colon + number
    if port and not _PORT.fullmatch(port):
        return value  # not a host and port: matches no allowed name
    return name.rstrip(".")


def allowed_name(entry: str) -> str:
    """An allow-list entry, checked: `*`, a host name or an IP address (a port is ignored);
    ValueError otherwise."""
    entry = entry.strip()
    if entry == ANY_HOST:
        return entry
    name = normal_host(entry)
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"'{entry[:100]}' is not a host name or IP address (like api.example.com, 10.0.0.7, [::1])")
    return entry


class HostCheck:
    """Refuse a request whose Host header names another server: 421, or 400 without a Host.
    `allowed`: host names (any port); `*` allows every host."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = LOCAL_HOSTS):
        self.app = app
        self.any = ANY_HOST in allowed
        self.allowed = frozenset(normal_host(h) for h in allowed if h.strip() and h != ANY_HOST)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.any:
            return await self.app(scope, receive, send)
        host = next((v for k, v in scope.get("headers", []) if k == b"host"), None)
        if host is None:
            return await _reply(send, 400, "the request has no Host header")
        name = normal_host(host.decode("latin-1"))
        if name not in self.allowed:
            return await _reply(send, 421, f"this server does not answer for the host {name[:100]!r} "
                                           "(allowed: --allowed-host, ENGINE_SERVE_ALLOWED_HOSTS)")
        await self.app(scope, receive, send)


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `path` lies under one of `prefixes` (each ending in '/'; '/ui' is under '/ui/')."""
    return bool(prefixes) and (path.startswith(prefixes) or f"{path}/" in prefixes)


def media_type(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's Content-Type without its parameters, lower case ('' when absent)."""
    value = next((v for k, v in headers if k == b"content-type"), b"")
    return value.decode("latin-1").partition(";")[0].strip().lower()


class JsonOnly:
    """A write (POST, PUT, PATCH, DELETE) outside `exempt` needs `Content-Type: application/json`,
    else 415 before the body is read."""

    def __init__(self, app: ASGIApp, exempt: tuple[str, ...] = ()):
        self.app = app
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") in WRITE_METHODS
                and not under(scope.get("path", ""), self.exempt)
                and media_type(scope.get("headers", [])) != "application/json"):
            return await _reply(send, 415, "the request body must be JSON (Content-Type: application/json)")
        await self.app(scope, receive, send)


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The token of an `Authorization: Bearer <token>` header, or b''."""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return b""


def token_matches(given: bytes | str, token: str) -> bool:
    given = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(given, token.encode())


class BearerAuth:
    """Every request needs `Authorization: Bearer <token>`, else 401; paths starting with one of
    `exempt` (the review console, which checks the token or its session itself) pass through."""

    def __init__(self, app: ASGIApp, token: str, *, exempt: tuple[str, ...] = ()):
        self.app = app
        self.token = token
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or under(scope.get("path", ""), self.exempt):
            return await self.app(scope, receive, send)
        if not token_matches(bearer(scope.get("headers", [])), self.token):
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


def too_deep() -> BadRequest:
    return BadRequest(422, f"the JSON nests deeper than {MAX_DEPTH} levels")


def parse_json(text: str) -> Any:
    """`text` as strict, sanitised JSON (see the module docstring): BadRequest 422 when it nests
    deeper than MAX_DEPTH, 400 when it is not JSON."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:  # deeper than the parser goes: deeper than MAX_DEPTH too
        raise too_deep() from None
    except ValueError as e:
        raise BadRequest(400, f"not valid JSON: {str(e)[:200]}") from None
    return sanitise(value)


def parse_body(raw: bytes) -> Any:
    """The request's JSON, strict and sanitised (see the module docstring), or BadRequest."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "the request body is not UTF-8") from None
    try:
        return parse_json(text)
    except BadRequest as e:
        if e.status == 400:
            raise BadRequest(400, f"the request body is {e.detail}") from None
        raise


def sanitise(value: Any) -> Any:
    """Strings made storable (lone surrogates -> U+FFFD); nesting over MAX_DEPTH refused (422)."""
    def walk(item: Any, depth: int) -> Any:
        if isinstance(item, str):
            return clean_text(item)
        if isinstance(item, (list, dict)) and depth > MAX_DEPTH:
            raise too_deep()
        if isinstance(item, list):
            return [walk(v, depth + 1) for v in item]
        if isinstance(item, dict):
            return {clean_text(k): walk(v, depth + 1) for k, v in item.items()}
        return item

    return walk(value, 1)


def install(app: Any, *, max_body: int = DEFAULT_MAX_BODY, token: str | None = None,
            allowed_hosts: tuple[str, ...] = LOCAL_HOSTS, exempt: tuple[str, ...] = ()) -> Any:
    """Wrap a FastAPI app in the guards. They run in this order: the Host check, the token (not
    under `exempt`), the content type (not under `exempt`), the body limit."""
    app.add_middleware(BodyLimit, max_body=max_body)
    app.add_middleware(JsonOnly, exempt=exempt)
    if token:
        app.add_middleware(BearerAuth, token=token, exempt=exempt)
    app.add_middleware(HostCheck, allowed=tuple(allowed_hosts))
    return app
