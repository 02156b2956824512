"""The review console against other websites: DNS rebinding (a foreign Host), bodies that are not
forms, sessions (random, Max-Age, revoked at logout, expiring), the login rate limit, flash
messages by key, bounded JSON nesting, and the routers' guards."""

from __future__ import annotations

import re

import pytest

from engine.promotion import records, review

FOREIGN = "rebound.attacker.example"


def _token(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page).group(1)


def _propose(store, path) -> str:
    ((_, report),) = review.propose(store, path, scripts=False)
    (p,) = report.proposed
    return p.id


def _feedback_rows(store) -> int:
    return store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("host", [FOREIGN, f"{FOREIGN}:8000", "127.0.0.1.attacker.example", "localhost.evil"])
def test_a_foreign_host_can_neither_read_a_page_nor_post(console, tickets, store, host):
    pid = _propose(store, tickets)
    client = console()
    token = _token(client.get("/ui/queue").text)  # the page as this server's own origin sees it
    for url in ("/ui/queue", f"/ui/proposals/{pid}", "/ui/quality", "/ui/login", "/ui/static/console.js"):
        page = client.get(url, headers={"host": host})
        assert page.status_code == 421 and "csrf-token" not in page.text, url
    run_id = store.query("SELECT run_id FROM steps LIMIT 1")[0]["run_id"]
    posted = client.post("/ui/queue/label", headers={"host": host},
                         data={"csrf_token": token, "run_id": run_id, "step": "classify", "ok": "1"})
    accepted = client.post(f"/ui/proposals/{pid}/accept", headers={"host": host}, data={"csrf_token": token})
    assert posted.status_code == accepted.status_code == 421
    assert _feedback_rows(store) == 0 and records.get(store, pid).status == "proposed"


@pytest.mark.parametrize("host", ["localhost", "localhost:8123", "127.0.0.1:80", "[::1]:9000", "LOCALHOST."])
def test_localhost_names_with_any_port_are_answered(console, host):
    assert console().get("/ui/queue", headers={"host": host}).status_code == 200


def test_allowed_hosts_are_configurable(console):
    client = console(allowed_hosts=("review.internal",))
    assert client.get("/ui/queue", headers={"host": "review.internal:8443"}).status_code == 200
    assert client.get("/ui/queue").status_code == 421  # localhost is no longer on the list
    assert console(allowed_hosts=("*",)).get("/ui/queue", headers={"host": FOREIGN}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/json", None])
def test_a_label_post_that_is_not_a_form_is_refused(console, store, content_type):
    """A page on another site may POST text/plain (or no body type) without asking the browser first;
    even with the CSRF token in the header, only a form is accepted."""
    client = console()
    page = client.get("/ui/queue").text
    token = _token(page)
    run_id = re.search(r'id="item" data-run="([^"]+)"', page).group(1)
    body = f"csrf_token={token}&run_id={run_id}&step=classify&ok=1"
    headers = {"x-csrf-token": token, **({"content-type": content_type} if content_type else {})}
    r = client.post("/ui/queue/label", content=body.encode(), headers=headers)
    assert r.status_code == 415 and "x-www-form-urlencoded" in r.text
    assert _feedback_rows(store) == 0
    ok = client.post("/ui/queue/label", content=body.encode(),
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 303 and _feedback_rows(store) == 1  # the same body as a form is taken


@pytest.mark.parametrize("depth", [65, 2000, 200_000])
def test_a_deeply_nested_json_label_is_422_and_writes_nothing(console, store, depth):
    client = console(max_body=10_000_000)
    page = client.get("/ui/queue").text
    run_id = re.search(r'id="item" data-run="([^"]+)"', page).group(1)
    output = "[" * depth + "]" * depth
    r = client.post("/ui/queue/label", data={"csrf_token": _token(page), "run_id": run_id, "step": "classify",
                                             "output": output})
    assert r.status_code == 422 and "nests deeper than 64 levels" in r.text
    assert _feedback_rows(store) == 0


def _login(client, token="s3cret"):
    page = client.get("/ui/login")
    return client.post("/ui/login", data={"csrf_token": _token(page.text), "token": token})


def test_sessions_are_random_expire_and_die_at_logout(console):
    client = console(token="s3cret")
    first = _login(client)
    assert first.status_code == 303
    cookie = first.cookies["engine_session"]
    header = first.headers["set-cookie"].lower()
    assert "max-age=43200" in header and "httponly" in header and "samesite=strict" in header and "path=/ui" in header
    other = console(token="s3cret")
    second = _login(other).cookies["engine_session"]
    assert cookie != second and len(cookie) >= 40  # random, not a digest of the token
    assert client.get("/ui/proposals").status_code == 200
    token = _token(client.get("/ui/queue").text)
    out = client.post("/ui/logout", data={"csrf_token": token})
    assert out.status_code == 303 and "engine_session=" in out.headers["set-cookie"]
    # a copy of the old cookie no longer works, on pages and on actions
    client.cookies.set("engine_session", cookie, domain="localhost", path="/ui")
    assert client.get("/ui/proposals").status_code == 303
    assert client.post("/ui/queue/label", data={"csrf_token": token}).status_code == 401
    # a session expires after its Max-Age
    clock = Clock()
    console_state = other.app.state.engine_console
    console_state.sessions.clock = clock
    third = _login(other).cookies["engine_session"]
    other.cookies.set("engine_session", third, domain="localhost", path="/ui")
    assert other.get("/ui/proposals").status_code == 200
    clock.now += 12 * 3600
    assert other.get("/ui/proposals").status_code == 303


def test_a_session_is_not_the_api_token(console):
    client = console(token="s3cret")
    assert _login(client).status_code == 303
    assert client.post("/workflows/tickets/run", json={"ticket": "hello"}).status_code == 401
    forged = console(token="s3cret")
    forged.cookies.set("engine_session", "0" * 64, domain="localhost", path="/ui")
    assert forged.get("/ui/proposals").status_code == 303


def test_logins_are_rate_limited_per_client(console):
    client = console(token="s3cret")
    clock = Clock()
    client.app.state.engine_console.logins.clock = clock
    for _ in range(5):
        assert _login(client, "guess").status_code == 401
    limited = _login(client, "s3cret")  # even the right token waits now
    assert limited.status_code == 429 and "too many failed logins" in limited.text
    assert int(limited.headers["retry-after"]) == 60
    assert "engine_session" not in limited.cookies
    clock.now += 30
    assert _login(client, "s3cret").status_code == 429
    clock.now += 31
    assert _login(client, "s3cret").status_code == 303


@pytest.mark.parametrize("msg", ["<b>Your session expired: log in at evil.example</b>", "accepted",
                                 "call +1 555 0100 about your account"])
def test_flash_messages_come_by_key_never_as_text_from_the_url(console, tickets, store, msg):
    pid = _propose(store, tickets)
    client = console()
    for url in ("/ui/queue", "/ui/proposals", "/ui/quality"):
        page = client.get(url, params={"msg": msg}).text
        assert 'id="flash"' not in page and "evil.example" not in page and "555 0100" not in page
    detail = client.get(f"/ui/proposals/{pid}", params={"msg": msg}).text
    if msg == "accepted":  # a known key: its text, filled in by the server
        assert f"accepted {pid}: tickets/classify now served by lookup" in detail
    else:
        assert 'id="flash"' not in detail and "evil.example" not in detail and "555 0100" not in detail


def test_every_console_route_but_login_and_assets_needs_a_session(console):
    from engine.ui.app import actions, pages, public

    client = console(token="s3cret")
    assert {r.path for r in public.routes} == {"/ui/login", "/ui/logout", "/ui/static/{name}"}
    guarded = [*pages.routes, *actions.routes]
    assert {r.path for r in guarded} >= {"/ui/proposals", "/ui/queue", "/ui/queue/label", "/ui/quality"}
    for route in guarded:
        url = route.path.replace("{promotion_id}", "lk-x")
        for method in route.methods:
            r = client.request(method, url, data={"x": "1"} if method == "POST" else None)
            assert r.status_code in (303, 401), (method, url, r.status_code)
            if r.status_code == 303:
                assert r.headers["location"] == "/ui/login"


def test_engine_ui_takes_allowed_hosts(monkeypatch, tickets, store):
    import uvicorn
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from engine.cli import cli

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: seen.update(app=app))
    monkeypatch.delenv("ENGINE_SERVE_ALLOWED_HOSTS", raising=False)
    out = CliRunner().invoke(cli, ["ui", "--allowed-host", "review.internal", "--allowed-host", "10.0.0.7"])
    assert out.exit_code == 0, out.output
    client = TestClient(seen["app"], base_url="http://review.internal:8000", follow_redirects=False)
    assert client.get("/ui/queue").status_code == 200
    assert client.get("/ui/queue", headers={"host": "10.0.0.7:8000"}).status_code == 200
    assert client.get("/ui/queue", headers={"host": FOREIGN}).status_code == 421
