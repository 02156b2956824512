"""The review console (`engine serve --ui`, `engine ui`): server-rendered pages under /ui to review
promotions, label answers and watch quality and cost. Every asset ships in this package (jinja2
templates, one stylesheet, one small script); no build step, no CDN. Routes: engine.ui.app."""

from __future__ import annotations

from typing import Any

from engine.ui.app import PREFIX, PUBLIC, SESSION_COOKIE, Console, mount


def auth_options() -> dict[str, Any]:
    """BearerAuth's options for an app that serves the console: its session cookie, its open
    paths (login page, static assets) and where a page without a session is sent."""
    return {"cookie": SESSION_COOKIE, "public": PUBLIC, "login": f"{PREFIX}/login", "login_prefix": PREFIX}


def add_console(app: Any, store: Any, *, read_only: bool = False, token: str | None = None) -> Any:
    """Mount the console on a FastAPI app whose guards were installed with `auth_options()`."""
    return mount(app, Console(store=store, read_only=read_only, token=token))


__all__ = ["Console", "PREFIX", "add_console", "auth_options"]
