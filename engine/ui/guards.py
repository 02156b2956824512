"""The review console's guards, as FastAPI dependencies of its routers (engine.ui.app):

- `signed_in`: with a token set, the session cookie or `Authorization: Bearer <token>`; a page
  without either is sent to the login page (303), anything else gets 401.
- `writable`: 403 under `--read-only`.
- `form_post`: the body must be a form (`application/x-www-form-urlencoded`, else 415) carrying
  the CSRF token (engine.ui.csrf, else 403); gives the form's fields.
- `login_allowed`: 429 (with Retry-After) once a client failed to log in too often.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, Request

from engine.http_guard import bearer, media_type, token_matches
from engine.ui.console import PREFIX, SESSION_COOKIE, Console, ConsoleRefusal

FORM = "application/x-www-form-urlencoded"
Form = dict[str, str]


def get_console(request: Request) -> Console:
    console: Console = request.app.state.engine_console
    return console


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def signed_in(request: Request, console: Console = Depends(get_console)) -> None:
    if console.token is None:
        return
    if token_matches(bearer(request.headers.raw), console.token):
        return
    if console.sessions.valid(request.cookies.get(SESSION_COOKIE, "")):
        return
    if request.method == "GET":
        raise ConsoleRefusal(303, "log in first", location=f"{PREFIX}/login")
    raise ConsoleRefusal(401, "log in first (or send Authorization: Bearer with ENGINE_SERVE_TOKEN)",
                         headers={"www-authenticate": "Bearer"})


def writable(console: Console = Depends(get_console)) -> None:
    if console.read_only:
        raise ConsoleRefusal(403, "this console is read-only (--read-only): nothing can be changed")


async def form_post(request: Request, console: Console = Depends(get_console)) -> Form:
    if media_type(request.headers.raw) != FORM:
        raise ConsoleRefusal(415, f"a console form is sent as {FORM}")
    try:
        parsed = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise ConsoleRefusal(400, "the form is not UTF-8") from None
    form = {k: v[0] for k, v in parsed.items()}
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    refused = console.csrf.check(request.cookies, form, request.headers, own)
    if refused:
        raise ConsoleRefusal(403, refused)
    return form


def login_allowed(request: Request, console: Console = Depends(get_console)) -> None:
    wait = console.logins.retry_after(client_of(request))
    if wait:
        raise ConsoleRefusal(429, f"too many failed logins: try again in {wait} s",
                             headers={"retry-after": str(wait)})


def refusal_handler(request: Request, exc: Exception) -> Any:
    """The app's handler of ConsoleRefusal: a redirect, or the console's error page."""
    from fastapi.responses import RedirectResponse

    assert isinstance(exc, ConsoleRefusal)
    if exc.location:
        return RedirectResponse(exc.location, status_code=exc.status)
    return get_console(request).error(request, exc.status, exc.message, headers=exc.headers)
