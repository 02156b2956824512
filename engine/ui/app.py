"""The review console's routes, under /ui. Each page reads through the library and each action is
the call the CLI makes; this module only parses requests and renders templates.

    GET  /ui/proposals                 filters: workflow, step, kind, status   (promotions list, status)
    GET  /ui/proposals/{id}            rows or code, evidence, verification, savings, diff  (promotions show)
    POST /ui/proposals/{id}/accept                                             (promotions accept)
    POST /ui/proposals/{id}/reject     reason                                  (promotions reject --reason)
    POST /ui/proposals/{id}/shadow     on = 1 | 0                              (promotions shadow [--off])
    GET  /ui/queue                     answers worth a look                    (engine.quality.queue)
    POST /ui/queue/label               run_id, step, ok | output (JSON)        (engine feedback)
    GET  /ui/quality                   agreement, cost by source, savings      (engine quality, engine report)
    GET  /ui/login, POST /ui/login, POST /ui/logout   (only when a token is set)
    GET  /ui/static/{file}             the stylesheet and the script, shipped in the package

Three routers, their guards as dependencies (engine.ui.guards): `public` (login, logout, static
assets), `pages` (signed in) and `actions` (signed in, writable, a form with the CSRF token).
"""

from __future__ import annotations

import hmac
from contextlib import contextmanager
from importlib import resources
from typing import Any, Iterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.errors import UserError
from engine.http_guard import BadRequest, parse_json
from engine.promotion import review
from engine.quality.feedback import FeedbackError, give_feedback
from engine.quality.queue import recent_labels, review_queue
from engine.report_html import agreement_svg, chart_svg, served_svg
from engine.reporting import ReportFilter, build_report
from engine.ui.console import PREFIX, SESSION_COOKIE, Console, ConsoleRefusal, back, status_of
from engine.ui.guards import Form, client_of, form_post, get_console, login_allowed, refusal_handler, signed_in, writable

STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
PROMOTION_STATUSES = ["proposed", "accepted", "rejected", "demoted", "stale", "unverified", "superseded"]

public = APIRouter(prefix=PREFIX, include_in_schema=False)
pages = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(signed_in)])
actions = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(signed_in), Depends(writable)])


@contextmanager
def refused_as_page() -> Iterator[None]:
    """A library call's UserError becomes the console's error page (404, 409 or 422)."""
    try:
        yield
    except UserError as e:
        raise ConsoleRefusal(status_of(e), str(e)) from None


# --- public: assets, login, logout ------------------------------------------------------------

@public.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404)
    body = resources.files("engine.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"x-content-type-options": "nosniff",
                                                             "cache-control": "max-age=300"})


@public.get("/login")
def login_page(request: Request, console: Console = Depends(get_console)) -> Response:
    if console.token is None:
        return RedirectResponse(f"{PREFIX}/proposals", status_code=303)
    return console.page(request, "login.html", title="log in")


@public.post("/login", dependencies=[Depends(login_allowed)])
def login(request: Request, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    if console.token is None:
        return RedirectResponse(f"{PREFIX}/proposals", status_code=303)
    if not hmac.compare_digest(form.get("token", "").encode(), console.token.encode()):
        console.logins.failed(client_of(request))
        return console.page(request, "login.html", status=401, title="log in", error="wrong token")
    response = RedirectResponse(f"{PREFIX}/proposals", status_code=303)
    response.set_cookie(SESSION_COOKIE, console.sessions.start(), max_age=console.sessions.seconds, httponly=True,
                        samesite="strict", path=PREFIX, secure=request.url.scheme == "https")
    return response


@public.post("/logout")
def logout(request: Request, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    console.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
    response = back("/login", "logged-out")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


# --- pages --------------------------------------------------------------------------------------

@pages.get("")
@pages.get("/")
def home() -> Response:
    return RedirectResponse(f"{PREFIX}/proposals", status_code=303)


@pages.get("/proposals")
def proposals(request: Request, workflow: str = "", step: str = "", kind: str = "", status: str = "",
              console: Console = Depends(get_console)) -> Response:
    store = console.store
    every = review.list_promotions(store, all_=True)
    found = review.list_promotions(store, workflow=workflow or None, step=step or None, kind=kind or None,
                                   status=status or None)
    options = {"workflow": sorted({p.workflow for p in every}), "step": sorted({p.step_id for p in every}),
               "kind": ["lookup", "script"], "status": PROMOTION_STATUSES}
    live = review.status(store, workflow=workflow or None)
    return console.page(request, "proposals.html", title="proposals", promotions=found, options=options,
                        filters={"workflow": workflow, "step": step, "kind": kind, "status": status},
                        live=live, page_name="proposals")


@pages.get("/proposals/{promotion_id}")
def proposal(request: Request, promotion_id: str, console: Console = Depends(get_console)) -> Response:
    store = console.store
    with refused_as_page():
        detail = review.show(store, promotion_id)
    p = detail.promotion
    live = next((r for r in review.status(store, workflow=p.workflow) if r.promotion.id == p.id), None)
    diffs = [(str(c.path.relative_to(detail.root)) if detail.root else str(c.path), c.diff(detail.root))
             for c in detail.changes]
    ids = [x.id for x in review.list_promotions(store, status="proposed")]
    following = ids[ids.index(p.id) + 1] if p.id in ids and ids.index(p.id) + 1 < len(ids) else None
    facts = {"id": p.id, "workflow": p.workflow, "step": p.step_id, "kind": p.kind}
    return console.page(request, "proposal.html", title=f"proposal {p.id}", facts=facts, p=p, detail=detail,
                        live=live, diffs=diffs, next_id=following, page_name="proposals")


def queue_page(request: Request, console: Console, workflow: str, at: int, status: int = 200,
               **extra: Any) -> HTMLResponse:
    items = review_queue(console.store, workflow=workflow or None)
    at = min(max(at, 0), max(len(items) - 1, 0))
    return console.page(request, "queue.html", status=status, facts={}, title="labelling queue", items=items,
                        item=items[at] if items else None, at=at, recent=recent_labels(console.store),
                        workflow=workflow, page_name="queue", **extra)


@pages.get("/queue")
def queue(request: Request, workflow: str = "", at: int = 0, console: Console = Depends(get_console)) -> Response:
    return queue_page(request, console, workflow, at)


@pages.get("/quality")
def quality(request: Request, workflow: str = "", since: str = "", console: Console = Depends(get_console)) -> Response:
    try:
        report = build_report(console.store, ReportFilter(workflow=workflow or None, since=since or None), ("source",))
    except UserError as e:
        raise ConsoleRefusal(422, str(e)) from None
    return console.page(request, "quality.html", title="quality and cost", report=report, rows=report.quality,
                        chart=chart_svg(report), agreement=agreement_svg(report), served=served_svg(report),
                        workflow=workflow, since=since, page_name="quality")


# --- actions ------------------------------------------------------------------------------------

@actions.post("/proposals/{promotion_id}/accept")
def accept(promotion_id: str, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    with refused_as_page():
        p = review.accept(console.store, promotion_id).promotion
    return back(f"/proposals/{p.id}", "accepted")


@actions.post("/proposals/{promotion_id}/reject")
def reject(promotion_id: str, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    reason = form.get("reason", "").strip()
    if not reason:
        raise ConsoleRefusal(422, "a rejection needs a reason (it is remembered with the proposal)")
    with refused_as_page():
        p = review.reject(console.store, promotion_id, reason)
    return back(f"/proposals/{p.id}", "rejected")


@actions.post("/proposals/{promotion_id}/shadow")
def shadow(promotion_id: str, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    with refused_as_page():
        p = review.set_shadow(console.store, promotion_id, form.get("on", "1") == "1")
    return back(f"/proposals/{p.id}", "shadow-on" if p.shadow else "shadow-off")


@actions.post("/queue/label")
def label(request: Request, form: Form = Depends(form_post), console: Console = Depends(get_console)) -> Response:
    run_id, step = form.get("run_id", ""), form.get("step", "")
    at = int(form["at"]) if form.get("at", "").isdigit() else 0
    try:
        if form.get("ok") == "1":
            give_feedback(console.store, run_id, step, ok=True, source="ui")
            done = "confirmed"
        else:
            try:
                output = parse_json(form.get("output", ""))
            except BadRequest as e:
                raise FeedbackError(f"the answer is not JSON: {e.detail.removeprefix('not valid JSON: ')}" if e.status == 400
                                    else f"the answer {e.detail.removeprefix('the JSON ')}") from None
            give_feedback(console.store, run_id, step, output=output, source="ui")
            done = "labelled"
    except FeedbackError as e:  # shown on the queue, the person's draft kept; nothing written
        return queue_page(request, console, form.get("workflow", ""), at, status=status_of(e), error=str(e),
                          draft=form.get("output"))
    return back("/queue", done, workflow=form.get("workflow"), at=at or None)


def mount(app: FastAPI, console: Console) -> FastAPI:
    """Add the console's routes to `app` (one console per app)."""
    app.state.engine_console = console
    app.add_exception_handler(ConsoleRefusal, refusal_handler)
    for router in (public, pages, actions):
        app.include_router(router)
    return app
