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

Every POST needs the CSRF token (engine.ui.csrf); with `read_only` every POST is 403.
"""

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from engine.errors import UserError
from engine.http_guard import session_value
from engine.ui.csrf import FIELD, Csrf, set_cookie

PREFIX = "/ui"
SESSION_COOKIE = "engine_session"
PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/static/")
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def _json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _compact(value: Any) -> str:
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
    env.filters.update(pretty=_json, compact=_compact, usd=_usd, pct=_pct)
    return env


@dataclass
class Console:
    """What the routes share: the store, the template environment, the CSRF signer, the mode."""

    store: Any
    read_only: bool = False
    token: str | None = None
    csrf: Csrf = field(default_factory=Csrf)
    env: Environment = field(default_factory=environment)

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        token, new_cookie = self.csrf.for_page(request.cookies)
        html = self.env.get_template(template).render(
            prefix=PREFIX, csrf_field=FIELD, csrf_token=token, read_only=self.read_only,
            logged_in=self.token is not None, message=request.query_params.get("msg"), **context)
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if new_cookie:
            set_cookie(response, new_cookie, secure=request.url.scheme == "https")
        return response

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status=status, title="error", error=message, status_code=status)


def _status_of(error: UserError) -> int:
    name = type(error).__name__
    if name.endswith("NotFoundError") or str(error).startswith("no run"):
        return 404
    if name == "PromotionStateError":
        return 409
    return 422


async def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        parsed = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _back(path: str, message: str, **params: Any) -> RedirectResponse:
    query = urlencode({**{k: v for k, v in params.items() if v not in (None, "")}, "msg": message})
    return RedirectResponse(f"{PREFIX}{path}?{query}", status_code=303, headers=SECURITY_HEADERS)


def mount(app: FastAPI, console: Console) -> FastAPI:
    """Add the console's routes to `app`."""
    from engine.promotion import review
    from engine.quality.feedback import FeedbackError, give_feedback
    from engine.quality.queue import recent_labels, review_queue
    from engine.reporting import ReportFilter, build_report
    from engine.report_html import agreement_svg, chart_svg, served_svg

    store = console.store

    async def action(request: Request, call: Callable[[dict[str, str]], Response]) -> Response:
        """A POST: read-only and CSRF checks, then the library call (off the event loop)."""
        if console.read_only:
            return console.error(request, 403, "this console is read-only (--read-only): nothing can be changed")
        form = await _form(request)
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        refused = console.csrf.check(request.cookies, form, request.headers, own)
        if refused:
            return console.error(request, 403, refused)
        try:
            return await asyncio.to_thread(call, form)
        except UserError as e:
            return console.error(request, _status_of(e), str(e))

    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse(f"{PREFIX}/proposals", status_code=303)

    @app.get(PREFIX + "/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404)
        body = resources.files("engine.ui").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"x-content-type-options": "nosniff",
                                                                 "cache-control": "max-age=300"})

    @app.get(PREFIX + "/login", include_in_schema=False)
    def login_page(request: Request) -> Response:
        if console.token is None:
            return RedirectResponse(f"{PREFIX}/proposals", status_code=303)
        return console.page(request, "login.html", title="log in")

    @app.post(PREFIX + "/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        refused = console.csrf.check(request.cookies, form, request.headers,
                                     f"{request.url.scheme}://{request.headers.get('host', '')}")
        if refused:
            return console.error(request, 403, refused)
        if console.token is None:
            return RedirectResponse(f"{PREFIX}/proposals", status_code=303)
        if not hmac.compare_digest(form.get("token", "").encode(), console.token.encode()):
            return console.page(request, "login.html", status=401, title="log in", error="wrong token")
        response = RedirectResponse(f"{PREFIX}/proposals", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_value(console.token), httponly=True, samesite="strict",
                            path=PREFIX, secure=request.url.scheme == "https")
        return response

    @app.post(PREFIX + "/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        form = await _form(request)
        refused = console.csrf.check(request.cookies, form, request.headers,
                                     f"{request.url.scheme}://{request.headers.get('host', '')}")
        if refused:
            return console.error(request, 403, refused)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # --- proposals ------------------------------------------------------------------------------

    @app.get(PREFIX + "/proposals", include_in_schema=False)
    def proposals(request: Request, workflow: str = "", step: str = "", kind: str = "",
                  status: str = "") -> Response:
        every = review.list_promotions(store, all_=True)
        found = review.list_promotions(store, workflow=workflow or None, step=step or None, kind=kind or None,
                                       status=status or None)
        options = {"workflow": sorted({p.workflow for p in every}), "step": sorted({p.step_id for p in every}),
                   "kind": ["lookup", "script"],
                   "status": ["proposed", "accepted", "rejected", "demoted", "stale", "unverified", "superseded"]}
        live = review.status(store, workflow=workflow or None)
        return console.page(request, "proposals.html", title="proposals", promotions=found, options=options,
                            filters={"workflow": workflow, "step": step, "kind": kind, "status": status},
                            live=live, page_name="proposals")

    @app.get(PREFIX + "/proposals/{promotion_id}", include_in_schema=False)
    def proposal(request: Request, promotion_id: str) -> Response:
        try:
            detail = review.show(store, promotion_id)
        except UserError as e:
            return console.error(request, _status_of(e), str(e))
        p = detail.promotion
        live = next((r for r in review.status(store, workflow=p.workflow) if r.promotion.id == p.id), None)
        diffs = [(str(c.path.relative_to(detail.root)) if detail.root else str(c.path), c.diff(detail.root))
                 for c in detail.changes]
        ids = [x.id for x in review.list_promotions(store, status="proposed")]
        following = ids[ids.index(p.id) + 1] if p.id in ids and ids.index(p.id) + 1 < len(ids) else None
        return console.page(request, "proposal.html", title=f"proposal {p.id}", p=p, detail=detail, live=live,
                            diffs=diffs, next_id=following, page_name="proposals")

    @app.post(PREFIX + "/proposals/{promotion_id}/accept", include_in_schema=False)
    async def accept(request: Request, promotion_id: str) -> Response:
        def call(form: dict[str, str]) -> Response:
            p = review.accept(store, promotion_id).promotion
            return _back(f"/proposals/{p.id}", f"accepted {p.id}: {p.workflow}/{p.step_id} now served by {p.kind}")

        return await action(request, call)

    @app.post(PREFIX + "/proposals/{promotion_id}/reject", include_in_schema=False)
    async def reject(request: Request, promotion_id: str) -> Response:
        def call(form: dict[str, str]) -> Response:
            reason = form.get("reason", "").strip()
            if not reason:
                raise UserError("a rejection needs a reason (it is remembered with the proposal)")
            p = review.reject(store, promotion_id, reason)
            return _back(f"/proposals/{p.id}", f"rejected {p.id}")

        return await action(request, call)

    @app.post(PREFIX + "/proposals/{promotion_id}/shadow", include_in_schema=False)
    async def shadow(request: Request, promotion_id: str) -> Response:
        def call(form: dict[str, str]) -> Response:
            p = review.set_shadow(store, promotion_id, form.get("on", "1") == "1")
            return _back(f"/proposals/{p.id}", f"{p.id}: shadow {'on' if p.shadow else 'off'}")

        return await action(request, call)

    # --- labelling queue ------------------------------------------------------------------------

    def queue_page(request: Request, workflow: str, at: int, status: int = 200, **extra: Any) -> HTMLResponse:
        items = review_queue(store, workflow=workflow or None)
        at = min(max(at, 0), max(len(items) - 1, 0))
        return console.page(request, "queue.html", status=status, title="labelling queue", items=items,
                            item=items[at] if items else None, at=at, recent=recent_labels(store),
                            workflow=workflow, page_name="queue", **extra)

    @app.get(PREFIX + "/queue", include_in_schema=False)
    def queue(request: Request, workflow: str = "", at: int = 0) -> Response:
        return queue_page(request, workflow, at)

    @app.post(PREFIX + "/queue/label", include_in_schema=False)
    async def label(request: Request) -> Response:
        def call(form: dict[str, str]) -> Response:
            run_id, step = form.get("run_id", ""), form.get("step", "")
            at = int(form["at"]) if form.get("at", "").isdigit() else 0
            try:
                if form.get("ok") == "1":
                    row = give_feedback(store, run_id, step, ok=True, source="ui")
                    done = f"confirmed {row['workflow']}/{row['step_id']} in run {run_id[:12]}"
                else:
                    try:
                        output = json.loads(form.get("output", ""))
                    except ValueError as e:
                        raise FeedbackError(f"the answer is not JSON: {e}") from None
                    row = give_feedback(store, run_id, step, output=output, source="ui")
                    done = (f"labelled {row['workflow']}/{row['step_id']} in run {run_id[:12]}: "
                            f"{_compact(row['output'])}")
            except FeedbackError as e:  # shown on the queue, the person's draft kept; nothing written
                return queue_page(request, form.get("workflow", ""), at, status=_status_of(e), error=str(e),
                                  draft=form.get("output"))
            return _back("/queue", done, workflow=form.get("workflow"), at=at or None)

        return await action(request, call)

    # --- quality and cost -----------------------------------------------------------------------

    @app.get(PREFIX + "/quality", include_in_schema=False)
    def quality(request: Request, workflow: str = "", since: str = "") -> Response:
        try:
            report = build_report(store, ReportFilter(workflow=workflow or None, since=since or None), ("source",))
        except UserError as e:
            return console.error(request, 422, str(e))
        return console.page(request, "quality.html", title="quality and cost", report=report,
                            rows=report.quality, chart=chart_svg(report),
                            agreement=agreement_svg(report), served=served_svg(report), workflow=workflow,
                            since=since, page_name="quality")

    return app
