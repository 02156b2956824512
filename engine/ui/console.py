"""What the review console's routes share: the store, the templates, the CSRF signer, the logins,
the mode; rendering a page or a refusal; flash messages.

A flash message travels as a key (`?msg=accepted`), never as text: the page shows the text that
key stands for, filled in from what the server itself knows (the proposal on the page). An
unknown key, or one that does not belong to the page, shows nothing.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from engine.errors import UserError
from engine.ui.csrf import FIELD, Csrf, set_cookie
from engine.ui.sessions import LoginLimiter, Sessions

PREFIX = "/ui"
SESSION_COOKIE = "engine_session"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
FLASH = {
    "accepted": "accepted {id}: {workflow}/{step} now served by {kind}",
    "rejected": "rejected {id}",
    "shadow-on": "{id}: shadow on",
    "shadow-off": "{id}: shadow off",
    "labelled": "labelled: the answer is written as feedback; the queue moved on",
    "confirmed": "confirmed: the answer is verified by a person; the queue moved on",
    "logged-out": "logged out",
}


class ConsoleRefusal(Exception):
    """A request the console refuses, shown as its error page (or sent to `location`)."""

    def __init__(self, status: int, message: str, *, location: str | None = None,
                 headers: dict[str, str] | None = None):
        self.status = status
        self.message = message
        self.location = location
        self.headers = headers or {}
        super().__init__(message)


def _json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def compact(value: Any) -> str:
    return value if isinstance(value, str) else _json(value, None)


def _usd(value: Any) -> str:
    if not value:
        return "$0"
    text = f"${abs(float(value)):,.6f}".rstrip("0").rstrip(".")
    return ("-" if float(value) < 0 else "") + text


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def environment() -> Environment:
    env = Environment(loader=PackageLoader("engine.ui", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pretty=_json, compact=compact, usd=_usd, pct=_pct)
    return env


def flash(key: str | None, **facts: Any) -> str | None:
    """The text of flash message `key`, filled in from `facts`; None when either is missing."""
    text = FLASH.get(key or "")
    if text is None:
        return None
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    if not names <= facts.keys():
        return None
    return text.format(**facts)


def status_of(error: UserError) -> int:
    name = type(error).__name__
    if name.endswith("NotFoundError") or str(error).startswith("no run"):
        return 404
    if name == "PromotionStateError":
        return 409
    return 422


def back(path: str, key: str, **params: Any) -> RedirectResponse:
    """303 to a console page that shows flash message `key`."""
    query = urlencode({**{k: v for k, v in params.items() if v not in (None, "")}, "msg": key})
    return RedirectResponse(f"{PREFIX}{path}?{query}", status_code=303, headers=SECURITY_HEADERS)


@dataclass
class Console:
    """The console's state: one per app (`app.state.engine_console`)."""

    store: Any
    read_only: bool = False
    token: str | None = None
    csrf: Csrf = field(default_factory=Csrf)
    sessions: Sessions = field(default_factory=Sessions)
    logins: LoginLimiter = field(default_factory=LoginLimiter)
    env: Environment = field(default_factory=environment)

    def page(self, request: Request, template: str, status: int = 200, *, facts: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
        """Render `template`; `facts` fill in the flash message named by `?msg=`."""
        token, new_cookie = self.csrf.for_page(request.cookies)
        html = self.env.get_template(template).render(
            prefix=PREFIX, csrf_field=FIELD, csrf_token=token, read_only=self.read_only,
            logged_in=self.token is not None, message=flash(request.query_params.get("msg"), **(facts or {})),
            **context)
        response = HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
        if new_cookie:
            set_cookie(response, new_cookie, secure=request.url.scheme == "https")
        return response

    def error(self, request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
        return self.page(request, "error.html", status=status, headers=headers, title="error", error=message,
                         status_code=status)
