"""The review console over HTTP: every route, the same library calls as the CLI, CSRF on every
POST, read-only mode, bearer/session auth, and output escaped everywhere."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import run_workflow
from engine.cli import cli
from engine.promotion import records, review

from ui_helpers import HOSTILE, TRUTH, UNSURE, WORKFLOW


def _propose(store, path) -> str:
    ((_, report),) = review.propose(store, path, scripts=False)
    (p,) = report.proposed
    return p.id


def _token(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page).group(1)


def _form(client, page_url: str, action: str, **data: str):
    page = client.get(page_url)
    assert page.status_code == 200, page.text
    token = _token(page.text)
    return client.post(action, data={"csrf_token": token, **data})


def test_home_and_static_assets(console):
    client = console()
    assert client.get("/ui").headers["location"] == "/ui/proposals"
    js = client.get("/ui/static/console.js")
    assert js.status_code == 200 and "data-key" in js.text and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/console.css").status_code == 200
    assert client.get("/ui/static/../app.py").status_code == 404
    assert client.get("/ui/static/nope.js").status_code == 404


def test_proposals_list_filters_and_detail(console, tickets, store):
    pid = _propose(store, tickets)
    client = console()
    page = client.get("/ui/proposals")
    assert page.status_code == 200 and pid in page.text
    assert "reference" in page.text or "verified" in page.text  # evidence by trust level
    for query, shown in [("?workflow=tickets", True), ("?workflow=other", False), ("?step=classify", True),
                         ("?kind=lookup", True), ("?kind=script", False), ("?status=proposed", True),
                         ("?status=accepted", False)]:
        assert (pid in client.get("/ui/proposals" + query).text) is shown, query
    detail = client.get(f"/ui/proposals/{pid}")
    text = detail.text
    assert detail.status_code == 200
    p = records.get(store, pid)
    for row in p.payload["rows"]:  # every row with its input, output and evidence
        assert html.escape(json.dumps(row["input"], ensure_ascii=False), quote=False) in text.replace("&#34;", '"')
    assert 'id="rows"' in text and "labelled" in text and "unverified" in text
    assert "expected saving" in text and "tokens and $" in text
    assert "+++ b/promotions/tickets/manifest.yaml" in text and "classify.lookup.v1.json" in text  # the diff
    assert 'data-key="a"' in text and 'data-key="r"' in text and 'data-key="s"' in text  # shortcuts
    missing = client.get("/ui/proposals/lk-nope")
    assert missing.status_code == 404 and "no promotion" in missing.text


def test_accept_is_the_cli_call_and_the_next_run_is_served_at_zero_tokens(console, tickets, store, fake):
    pid = _propose(store, tickets)
    client = console()
    done = _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/accept")
    assert done.status_code == 303 and done.headers["location"].startswith(f"/ui/proposals/{pid}?")
    assert records.get(store, pid).status == "accepted"
    assert (tickets.parent / "promotions" / "tickets" / "classify.lookup.v1.json").is_file()
    calls = len(fake.requests)
    hit = run_workflow(tickets, {"ticket": "my card has not arrived"})
    step = hit.step("classify")
    assert (step.served_by, step.tokens_in, step.tokens_out, step.cost) == ("lookup", 0, 0, 0.0)
    assert len(fake.requests) == calls
    page = client.get(done.headers["location"]).text
    assert "accepted" in page and 'id="serves">1<' in page  # serving share shown
    listing = client.get("/ui/proposals").text
    assert 'id="live"' in listing and pid in listing
    again = _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/accept")  # no form any more: 409
    assert again.status_code == 409 and "only proposed" in again.text


def test_a_demoted_artifact_shows_why(console, tickets, store):
    pid = _propose(store, tickets)
    review.accept(store, pid)
    records.update(store, pid, status="demoted", reason="spot checks disagreed: 4 of 20 (Wilson > 3%)",
                   event="demoted")
    client = console()
    listing = client.get("/ui/proposals").text
    assert "spot checks disagreed: 4 of 20" in listing and "demoted" in listing
    detail = client.get(f"/ui/proposals/{pid}").text
    assert "spot checks disagreed" in detail and 'id="accept"' in detail  # accept re-activates it


def test_reject_needs_a_reason_and_is_remembered(console, tickets, store):
    pid = _propose(store, tickets)
    client = console()
    empty = _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/reject", reason="  ")
    assert empty.status_code == 422 and records.get(store, pid).status == "proposed"
    done = _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/reject", reason="hello is not a card <b>")
    assert done.status_code == 303
    p = records.get(store, pid)
    assert p.status == "rejected" and p.reason == "hello is not a card <b>"
    page = client.get(f"/ui/proposals/{pid}").text
    assert "hello is not a card &lt;b&gt;" in page and 'id="accept"' not in page


def test_shadow_on_and_off(console, tickets, store):
    pid = _propose(store, tickets)
    client = console()
    assert _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/shadow", on="1").status_code == 303
    assert records.get(store, pid).shadow == 1
    assert 'id="shadow-on"' in client.get(f"/ui/proposals/{pid}").text
    assert _form(client, f"/ui/proposals/{pid}", f"/ui/proposals/{pid}/shadow", on="0").status_code == 303
    assert records.get(store, pid).shadow == 0


@pytest.mark.parametrize("case", ["no token", "wrong token", "cross origin", "json body"])
def test_every_post_needs_the_csrf_token(console, tickets, store, case):
    pid = _propose(store, tickets)
    client = console()
    page = client.get(f"/ui/proposals/{pid}")
    token = _token(page.text)
    run_id = store.query("SELECT run_id FROM steps LIMIT 1")[0]["run_id"]
    posts = [(f"/ui/proposals/{pid}/accept", {}), (f"/ui/proposals/{pid}/reject", {"reason": "x"}),
             (f"/ui/proposals/{pid}/shadow", {"on": "1"}), ("/ui/queue/label", {"run_id": run_id,
                                                                               "step": "classify", "ok": "1"}),
             ("/ui/logout", {})]
    for url, data in posts:
        if case == "no token":
            r = client.post(url, data=data, headers={"content-type": "application/x-www-form-urlencoded"})
        elif case == "wrong token":
            r = client.post(url, data={**data, "csrf_token": "0" * 64})
        elif case == "cross origin":
            r = client.post(url, data={**data, "csrf_token": token}, headers={"origin": "https://evil.example"})
        else:  # not a form: refused before its token is looked for
            r = client.post(url, json={**data, "csrf_token": token})
            assert r.status_code == 415 and "x-www-form-urlencoded" in r.text, (url, r.status_code)
            continue
        assert r.status_code == 403, (url, r.status_code)
        assert "CSRF" in r.text or "cross-origin" in r.text
    assert records.get(store, pid).status == "proposed" and records.get(store, pid).shadow == 0
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0


def test_queue_orders_disagreements_low_confidence_then_sample(console, tickets, store, project):
    unchecked = project(WORKFLOW.replace("sample: 1.0", "sample: 0").replace("name: tickets", "name: unchecked"),
                        name="unchecked.yaml", config=None)
    run_workflow(unchecked, {"ticket": "something unchecked"})  # never checked: only the sample finds it
    from engine.quality.queue import review_queue

    items = review_queue(store)
    reasons = [i.reason for i in items]
    assert reasons == sorted(reasons, key=["disagreement", "low_confidence", "sample"].index)
    disagreeing = {i.input["ticket"] for i in items if i.reason == "disagreement"}
    assert disagreeing == {t for t, v in TRUTH.items() if v != "card"}
    assert [i.input["ticket"] for i in items if i.reason == "low_confidence"] == [UNSURE]
    assert [i.input["ticket"] for i in items if i.reason == "sample"] == ["something unchecked"]
    first = items[0]
    assert {a["tier"] for a in first.answers} == {"local", "premium"}  # every tier that answered
    assert first.choices == [{"intent": "card"}, {"intent": "refund"}, {"intent": "other"}]
    page = console().get("/ui/queue").text
    assert 'id="item"' in page and 'data-key="y"' in page and 'data-key="1"' in page and 'id="output"' in page


def test_labelling_writes_feedback_and_the_queue_moves_on(console, tickets, store):
    client = console()
    page = client.get("/ui/queue").text
    run_id = re.search(r'id="item" data-run="([^"]+)"', page).group(1)
    token = _token(page)
    # an answer that fails the step's schema: 422, shown on the queue with the draft, nothing written
    bad = client.post("/ui/queue/label", data={"csrf_token": token, "run_id": run_id, "step": "classify",
                                               "output": '{"intent": "lost"}'})
    assert bad.status_code == 422 and "rejected" in bad.text and "lost" in bad.text
    not_json = client.post("/ui/queue/label", data={"csrf_token": token, "run_id": run_id, "step": "classify",
                                                     "output": "{oops"})
    assert not_json.status_code == 422 and "not JSON" in not_json.text
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0
    right = {"intent": TRUTH[store.run(run_id)["inputs"]["ticket"]]}
    done = client.post("/ui/queue/label", data={"csrf_token": token, "run_id": run_id, "step": "classify",
                                                "output": json.dumps(right)})
    assert done.status_code == 303
    (row,) = store.query("SELECT run_id, kind, output, source FROM feedback")
    assert row == {"run_id": run_id, "kind": "label", "output": right, "source": "ui"}
    after = client.get(done.headers["location"]).text
    assert f'data-run="{run_id}"' not in after  # the queue moved on
    assert 'id="recent"' in after and "labelled" in after
    # confirm the next one: the run's answer becomes verified by a person
    next_run = re.search(r'id="item" data-run="([^"]+)"', after).group(1)
    token = _token(after)
    ok = client.post("/ui/queue/label", data={"csrf_token": token, "run_id": next_run, "step": "classify", "ok": "1"})
    assert ok.status_code == 303
    assert store.query("SELECT trust, verified_by FROM llm_calls WHERE run_id = ? AND purpose IS NULL",
                       [next_run]) == [{"trust": "verified", "verified_by": "person"}]


def test_quality_page_shows_agreement_cost_and_savings(console, tickets, store):
    page = console().get("/ui/quality")
    text = page.text
    assert page.status_code == 200
    assert 'id="agreement"' in text and "tickets/classify" in text
    # 6 checked, 3 agreed: 50%, with its Wilson interval and state
    assert "50.0%" in text and "active" in text and " – " in text
    assert '<svg' in text and "cost by source over time" in text  # the report's chart
    assert 'id="saved"' in text and "all-premium baseline" in text
    assert console().get("/ui/quality?since=yesterday").status_code == 422


def test_quality_page_shows_each_steps_answers_by_trust_level(console, tickets, store):
    rows = store.query("SELECT s.trust FROM steps s JOIN runs r ON r.id = s.run_id "
                       "WHERE r.workflow = 'tickets' AND s.step_id = 'classify' AND s.status = 'ok'")
    levels = ["reference", "verified", "labelled", "unverified"]
    counted = {level: sum(1 for r in rows if (r["trust"] if r["trust"] in levels else "unverified") == level)
               for level in levels}
    assert len(rows) > 0 and sum(v > 0 for v in counted.values()) >= 2  # more than one level to show
    page = console().get("/ui/quality").text
    table = page[page.index('id="served"'):page.index("</table>", page.index('id="served"'))]
    row = re.search(r"<td>tickets/classify</td>(.*?)</tr>", table, re.S).group(1)
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells == [str(len(rows))] + [f"{100 * counted[level] / len(rows):.1f}%" for level in levels]


def test_read_only_shows_everything_and_changes_nothing(console, tickets, store):
    pid = _propose(store, tickets)
    client = console(read_only=True)
    detail = client.get(f"/ui/proposals/{pid}").text
    assert 'id="read-only"' in detail and 'id="accept"' not in detail and 'id="rows"' in detail
    queue = client.get("/ui/queue").text
    assert 'id="item"' in queue and 'id="confirm"' not in queue
    run_id = re.search(r'id="item" data-run="([^"]+)"', queue).group(1)
    token = _token(detail)
    for url, data in [(f"/ui/proposals/{pid}/accept", {}), (f"/ui/proposals/{pid}/reject", {"reason": "x"}),
                      (f"/ui/proposals/{pid}/shadow", {"on": "1"}),
                      ("/ui/queue/label", {"run_id": run_id, "step": "classify", "ok": "1"})]:
        r = client.post(url, data={"csrf_token": token, **data})
        assert r.status_code == 403 and "read-only" in r.text
    assert records.get(store, pid).status == "proposed"
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0


def test_token_auth_is_shared_with_engine_serve(console, tickets):
    client = console(token="s3cret")
    assert client.get("/ui/proposals").status_code == 303  # a page: sent to log in
    assert client.get("/ui/proposals").headers["location"] == "/ui/login"
    assert client.post("/workflows/tickets/run", json={"ticket": "hello"}).status_code == 401
    assert client.get("/ui/proposals", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/ui/static/console.css").status_code == 200  # assets are public
    login = client.get("/ui/login")
    token = _token(login.text)
    wrong = client.post("/ui/login", data={"csrf_token": token, "token": "guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert client.post("/ui/login", data={"token": "s3cret"}).status_code == 403  # CSRF on login too
    ok = client.post("/ui/login", data={"csrf_token": token, "token": "s3cret"})
    assert ok.status_code == 303 and "s3cret" not in ok.headers["set-cookie"]  # a digest, not the token
    assert client.get("/ui/proposals").status_code == 200  # the session cookie
    assert client.post("/workflows/tickets/run", json={"ticket": "hello"}).status_code == 401  # not the API
    page = client.get("/ui/queue").text
    token = _token(page)
    assert client.post("/ui/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/ui/proposals").status_code == 303


def test_hostile_ticket_text_is_escaped_everywhere(console, tickets, store):
    pid = _propose(store, tickets)
    client = console()
    escaped = html.escape(HOSTILE, quote=True)
    pages = [client.get("/ui/queue"), client.get(f"/ui/proposals/{pid}"), client.get("/ui/quality")]
    queue = pages[0].text
    assert "<script>window" not in queue and "<img src=x" not in queue
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=" in queue
    assert escaped[:20] in queue
    for page in pages:
        assert "<script>window" not in page.text and "onerror=\"window" not in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # a workflow or step name is rendered escaped too (in the error page of an unknown id)
    odd = client.get("/ui/proposals/<script>x</script>")
    assert odd.status_code == 404 and "<script>x" not in odd.text


def test_engine_ui_and_serve_ui_commands(monkeypatch, tickets, store):
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: seen.update(app=app, host=host, port=port))
    out = CliRunner().invoke(cli, ["ui", "--port", "8123", "--read-only"])
    assert out.exit_code == 0, out.output
    assert "http://127.0.0.1:8123/ui (read-only)" in out.output
    from fastapi.testclient import TestClient

    client = TestClient(seen["app"], base_url="http://localhost")
    assert 'id="read-only"' in client.get("/ui/queue").text
    out = CliRunner().invoke(cli, ["serve", str(tickets), "--ui"])
    assert out.exit_code == 0, out.output
    client = TestClient(seen["app"], base_url="http://localhost")
    assert client.get("/ui/proposals").status_code == 200
    assert client.post("/workflows/tickets/run", json={"ticket": "hello"}).status_code == 200
    out = CliRunner().invoke(cli, ["serve", str(tickets)])  # no --ui: no console
    assert TestClient(seen["app"], base_url="http://localhost").get("/ui/proposals").status_code == 404


def test_templates_and_assets_ship_in_the_package():
    from importlib import resources

    root = resources.files("engine.ui")
    for name in ("base.html", "proposals.html", "proposal.html", "queue.html", "quality.html", "login.html",
                 "error.html"):
        assert root.joinpath("templates", name).is_file(), name
    for name in ("console.css", "console.js"):
        assert root.joinpath("static", name).is_file(), name
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"engine.ui" = ["templates/*.html", "static/*.css", "static/*.js"]' in pyproject
    assert "cdn" not in root.joinpath("templates", "base.html").read_text().lower()


def test_a_router_proposal_shows_its_evidence_or_that_it_found_no_signal(console, tickets, store):
    from engine.cache.embedders import get_embedder
    from engine.promotion.mining import step_hashes
    from engine.quality.router import train_router
    from engine.spec.loader import load_workflow

    hashes = step_hashes(load_workflow(tickets).step("classify").llm)
    texts = [f"card {i}" for i in range(30)] + [f"weather {i}" for i in range(30)]
    shown = {}
    for name, agree in (("signal", [True] * 30 + [False] * 30), ("none", [i % 2 == 0 for i in range(60)])):
        result = train_router(texts, agree, get_embedder("hash").embed, embedder="hash", cheap_tier="local")
        p = records.insert(store, records.Promotion(
            id=f"rt-{name}", workflow="tickets", workflow_path=str(tickets), step_id="classify", kind="router",
            status="proposed", prompt_hash=hashes[0], schema_hash=hashes[1], fingerprint=name,
            payload={"model": result.model.to_dict(), "normalize": []},
            verification={**result.report, "evidence": {"check": 60}, "passed": True}, reason=result.reason))
        shown[name] = console().get(f"/ui/proposals/{p.id}").text
    assert 'id="router"' in shown["signal"] and 'id="threshold"' in shown["signal"]
    assert "No usable signal" in shown["none"] and 'id="threshold"' not in shown["none"]
    listing = console().get("/ui/proposals").text
    assert "held out:" in listing and "no signal: every input goes up" in listing
