"""CSRF protection for the review console's forms (double submit, signed).

A page sets a random cookie (`engine_csrf`, HttpOnly, SameSite=Strict, path /ui) once; each form
carries `csrf_token` = HMAC(server secret, that cookie). A POST passes only when the token matches
the cookie it came with and, when the browser sends an Origin header, the origin is this server.
Another site can neither read the cookie nor compute the token without the secret, which lives in
the server process only.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any, Mapping

COOKIE = "engine_csrf"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
_VALUE = re.compile(r"[0-9a-f]{32}")


class Csrf:
    def __init__(self, secret: bytes | None = None):
        self.secret = secret or secrets.token_bytes(32)

    def token(self, cookie: str) -> str:
        return hmac.new(self.secret, cookie.encode(), "sha256").hexdigest()

    def for_page(self, cookies: Mapping[str, str]) -> tuple[str, str | None]:
        """(the form token, a new cookie value to set or None when the request had a valid one)."""
        cookie = cookies.get(COOKIE, "")
        if _VALUE.fullmatch(cookie):
            return self.token(cookie), None
        cookie = secrets.token_hex(16)
        return self.token(cookie), cookie

    def check(self, cookies: Mapping[str, str], form: Mapping[str, str], headers: Mapping[str, str],
              own_origin: str) -> str | None:
        """None when the POST may proceed, else why not."""
        origin = headers.get("origin")
        if origin and origin != "null" and origin.rstrip("/") != own_origin:
            return f"cross-origin form post from {origin}"
        cookie = cookies.get(COOKIE, "")
        given = form.get(FIELD) or headers.get(HEADER) or ""
        if not _VALUE.fullmatch(cookie) or not hmac.compare_digest(given.encode(), self.token(cookie).encode()):
            return "missing or wrong CSRF token: reload the page and try again"
        return None


def set_cookie(response: Any, value: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/ui", secure=secure)
