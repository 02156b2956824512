"""Other websites against `engine serve --ui`, in a real headless Chromium: a DNS-rebound name
(Chromium's resolver maps *.attacker.example to 127.0.0.1) cannot read the console, and a page
on another origin cannot start a run with a `text/plain` POST (no CORS preflight needed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine import Engine
from engine.http import create_app

from browser_support import LiveServer, start_browser

ATTACKER = "attacker.example"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser(f"--host-resolver-rules=MAP *.{ATTACKER} 127.0.0.1")
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def live(tickets: Path, store: Any) -> Iterator[LiveServer]:
    with LiveServer(create_app(Engine(), [tickets], console_store=store)) as server:
        yield server


def attacker_site(target: str) -> Any:
    """A page that POSTs a run to `target` as a plain `fetch` would: text/plain, no preflight."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI()
    page = f"""<!doctype html><title>loading</title><script>
fetch({target!r}, {{method: "POST", mode: "no-cors", body: '{{"ticket": "sent from another site"}}'}})
  .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "blocked"; }});
</script>"""

    @app.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def _wait_title(driver: Any, titles: set[str], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.title in titles:
            return str(driver.title)
        time.sleep(0.05)
    raise AssertionError(f"the page's title stayed {driver.title!r}")


def test_a_rebound_name_cannot_read_the_console(browser, live):
    browser.get(f"http://localhost:{live.port}/ui/queue")  # this server's own name: the page
    assert browser.find_elements("css selector", 'meta[name="csrf-token"]')
    browser.get(f"http://rebound.{ATTACKER}:{live.port}/ui/queue")  # the same socket, the attacker's name
    assert "does not answer for the host" in browser.page_source
    assert not browser.find_elements("css selector", 'meta[name="csrf-token"]')
    assert "csrf-token" not in browser.page_source


def test_another_site_cannot_start_a_run_with_a_text_plain_post(browser, live, fake):
    with LiveServer(attacker_site(f"{live.url}/workflows/tickets/run")) as evil:
        before = len(fake.requests)
        browser.get(f"http://www.{ATTACKER}:{evil.port}/")
        assert _wait_title(browser, {"sent", "blocked"}) == "sent"  # the browser sent it
    assert not [r for r in fake.requests[before:] if "sent from another site" in str(r.messages)]
