"""The review console (`engine serve --ui`, `engine ui`): server-rendered pages under /ui to review
promotions, label answers and watch quality and cost. Every asset ships in this package (jinja2
templates, one stylesheet, one small script); no build step, no CDN. Routes: engine.ui.app; their
guards: engine.ui.guards."""

from __future__ import annotations

from typing import Any

from engine.ui.console import PREFIX, Console


def add_console(app: Any, store: Any, *, read_only: bool = False, token: str | None = None) -> Any:
    """Mount the console on a FastAPI app whose guards exempt `PREFIX` (the console checks the
    token, its sessions and CSRF itself)."""
    from engine.ui.app import mount

    return mount(app, Console(store=store, read_only=read_only, token=token))


__all__ = ["Console", "PREFIX", "add_console"]
