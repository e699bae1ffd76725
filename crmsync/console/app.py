"""The console's Starlette app: login, sessions, CSRF, and the pages.

Every page and action needs a session (else a redirect to /login); every POST needs the
session's CSRF token (else 403); every action is logged with the user who did it. What the pages
read and write goes through the :class:`Backend` the composition root hands in, which wraps the
services the CLI uses: no rule is implemented here.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from crmsync.console.users import verify
from crmsync.errors import CrmsyncError

log = structlog.get_logger("crmsync.console")

PAGE = 50   # rows per page


class Backend(Protocol):
    """What the console reads and does; implemented in ``crmsync.cli.console`` on the container."""

    def mailboxes(self) -> list[str]: ...
    def overview(self) -> dict[str, Any]: ...
    def suggestions(self, mailbox: str, text: str) -> list[dict[str, Any]]: ...
    def search_folder(self, mailbox: str, text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...
    def links(self, mailbox: str, after_id: int, limit: int, text: str) -> list[dict[str, Any]]: ...
    def link(self, mailbox: str, crm_key: str, item_id: str) -> str: ...
    def unlink(self, mailbox: str, key_or_item: str) -> str: ...
    def review_items(self, mailbox: str | None) -> list[Any]: ...
    def review_accept(self, item_id: int, candidate: str | None, by: str) -> str: ...
    def review_reject(self, item_id: int, by: str) -> str: ...
    def conflicts(self, mailbox: str | None) -> list[Any]: ...
    def resolve(self, conflict_id: int, take: str | None, value: str | None, by: str) -> str: ...
    def held_deletes(self, mailbox: str | None) -> list[Any]: ...
    def decide_deletes(self, decision: str, ids: list[int] | None, mailbox: str | None) -> str: ...
    def events(self, status: str | None, mailbox: str | None, record: str | None, since: str | None,
               before_id: int | None, limit: int) -> list[dict[str, Any]]: ...
    def event(self, event_id: int) -> dict[str, Any] | None: ...
    def replay(self, ids: list[int] | None, mailbox: str | None) -> str: ...
    def history(self, record: str, mailbox: str | None) -> dict[str, Any]: ...


Handler = Callable[[Request], Awaitable[Response]]


def create_app(backend: Backend, *, users_file: str, secret_key: str, https: bool = False) -> Starlette:
    templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        flash = request.session.pop("flash", None)
        return templates.TemplateResponse(request, name, {
            "user": request.session.get("user"), "csrf": csrf_token(request), "flash": flash,
            "mailboxes": backend.mailboxes(), **context}, status_code=status_code)

    async def form_checked(request: Request) -> dict[str, Any] | None:
        form = await request.form()
        sent = str(form.get("csrf", ""))
        expected = request.session.get("csrf", "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            return None
        return {k: form.getlist(k) if k in ("ids",) else form.get(k) for k in form.keys()}

    def page(handler: Callable[..., Awaitable[Response]]) -> Handler:
        """A page or action: a session is needed; a POST needs the CSRF token."""
        async def wrapped(request: Request) -> Response:
            user = request.session.get("user")
            if not user:
                return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)
            if request.method == "POST":
                form = await form_checked(request)
                if form is None:
                    log.warning("console.csrf_refused", user=user, path=request.url.path)
                    return PlainTextResponse("CSRF token missing or wrong: reload the page and try again",
                                             status_code=403)
                return await handler(request, user, form)
            return await handler(request, user, None)
        return wrapped

    async def act(request: Request, user: str, action: str, work: Callable[[], str], back: str,
                  **fields: Any) -> Response:
        """Carry out an action (in a thread: the services block), log it with the user, and go back."""
        try:
            message = await run_in_threadpool(work)
        except CrmsyncError as exc:
            log.info("console.action_refused", user=user, action=action, reason=str(exc), **fields)
            request.session["flash"] = {"kind": "error", "text": str(exc)}
        else:
            log.info("console.action", user=user, action=action, **fields)
            request.session["flash"] = {"kind": "ok", "text": message}
        return RedirectResponse(back, status_code=303)

    # ------------------------------------------------------------------ login
    async def login(request: Request) -> Response:
        nxt = request.query_params.get("next", "/")
        if request.method == "GET":
            return render(request, "login.html", next=nxt)
        form = await form_checked(request)
        if form is None:
            return PlainTextResponse("CSRF token missing or wrong: reload the page and try again", status_code=403)
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        nxt = str(form.get("next") or "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if not await run_in_threadpool(verify, users_file, name, password):
            log.warning("console.login_failed", user=name)
            return render(request, "login.html", status_code=401, next=nxt, error="wrong user name or password")
        request.session.clear()
        request.session["user"] = name
        request.session["csrf"] = secrets.token_urlsafe(32)
        log.info("console.login", user=name)
        return RedirectResponse(nxt, status_code=303)

    @page
    async def logout(request: Request, user: str, form: Any) -> Response:
        if form is None:
            return RedirectResponse("/", status_code=303)
        request.session.clear()
        log.info("console.logout", user=user)
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------ pages
    @page
    async def overview(request: Request, user: str, form: Any) -> Response:
        return render(request, "overview.html", data=await run_in_threadpool(backend.overview))

    def _mailbox(request: Request, form: dict[str, Any] | None = None) -> str | None:
        given = (form or {}).get("mailbox") or request.query_params.get("mailbox")
        boxes = backend.mailboxes()
        if given in boxes:
            return str(given)
        return boxes[0] if len(boxes) == 1 and given is None else None

    @page
    async def link_page(request: Request, user: str, form: Any) -> Response:
        q = request.query_params
        mailbox = _mailbox(request) or (backend.mailboxes() or [None])[0]
        account, folder = q.get("account", "").strip(), q.get("folder", "").strip()
        after = int(q.get("after", "0") or 0)
        filt = q.get("links", "").strip()
        suggestions = await run_in_threadpool(backend.suggestions, mailbox, account) if mailbox and account else []
        hits, unlinked = (await run_in_threadpool(backend.search_folder, mailbox, folder)
                          if mailbox and folder else ([], []))
        links = await run_in_threadpool(backend.links, mailbox, after, PAGE, filt) if mailbox else []
        return render(request, "link.html", mailbox=mailbox, account=account, folder=folder, suggestions=suggestions,
                      hits=hits, unlinked=unlinked, links=links, links_filter=filt, page=PAGE, crm_key=q.get("crm_key", ""),
                      item_id=q.get("item_id", ""))

    @page
    async def link_add(request: Request, user: str, form: dict[str, Any]) -> Response:
        mailbox = _mailbox(request, form) or ""
        crm_key, item_id = str(form.get("crm_key") or "").strip(), str(form.get("item_id") or "").strip()
        return await act(request, user, "link.add", lambda: backend.link(mailbox, crm_key, item_id),
                         "/link?" + urlencode({"mailbox": mailbox}), mailbox=mailbox, crm_key=crm_key, item_id=item_id)

    @page
    async def link_remove(request: Request, user: str, form: dict[str, Any]) -> Response:
        mailbox = _mailbox(request, form) or ""
        key = str(form.get("key") or "").strip()
        return await act(request, user, "link.remove", lambda: backend.unlink(mailbox, key),
                         "/link?" + urlencode({"mailbox": mailbox}), mailbox=mailbox, key=key)

    @page
    async def review_page(request: Request, user: str, form: Any) -> Response:
        mailbox = _mailbox(request)
        start = request.query_params.get("start", "0")
        start_at = int(start) if start.isdigit() else 0
        rows = await run_in_threadpool(backend.review_items, mailbox)
        more = urlencode({"mailbox": mailbox or "", "start": start_at + PAGE}) if len(rows) > start_at + PAGE else None
        back = urlencode({"mailbox": mailbox or "", "start": max(start_at - PAGE, 0)}) if start_at else None
        return render(request, "review.html", mailbox=mailbox, rows=rows[start_at:start_at + PAGE], total=len(rows),
                      start=start_at, more=more, back=back, page=PAGE)

    @page
    async def review_accept(request: Request, user: str, form: dict[str, Any]) -> Response:
        rid = int(request.path_params["rid"])
        candidate = str(form.get("candidate") or "").strip() or None
        return await act(request, user, "review.accept",
                         lambda: backend.review_accept(rid, candidate, f"console:{user}"),
                         "/review", review_item=rid, candidate=candidate)

    @page
    async def review_reject(request: Request, user: str, form: dict[str, Any]) -> Response:
        rid = int(request.path_params["rid"])
        return await act(request, user, "review.reject", lambda: backend.review_reject(rid, f"console:{user}"),
                         "/review", review_item=rid)

    @page
    async def conflicts_page(request: Request, user: str, form: Any) -> Response:
        mailbox = _mailbox(request)
        rows = await run_in_threadpool(backend.conflicts, mailbox)
        return render(request, "conflicts.html", mailbox=mailbox, rows=rows)

    @page
    async def conflict_resolve(request: Request, user: str, form: dict[str, Any]) -> Response:
        cid = int(request.path_params["cid"])
        take = form.get("take") or None
        value = form.get("value") if take is None else None
        if take not in (None, "crm", "exchange"):
            take = None
        return await act(request, user, "conflict.resolve",
                         lambda: backend.resolve(cid, take, None if value is None else str(value), f"console:{user}"),
                         "/conflicts", conflict=cid, take=take, typed=value is not None)

    @page
    async def deletes_page(request: Request, user: str, form: Any) -> Response:
        mailbox = _mailbox(request)
        rows = await run_in_threadpool(backend.held_deletes, mailbox)
        return render(request, "deletes.html", mailbox=mailbox, rows=rows)

    @page
    async def deletes_decide(request: Request, user: str, form: dict[str, Any]) -> Response:
        decision = str(form.get("decision") or "")
        if decision not in ("approve", "discard"):
            return PlainTextResponse("decision: approve or discard", status_code=400)
        every = form.get("all") == "1"
        ids = None if every else [int(i) for i in form.get("ids") or [] if str(i).isdigit()]
        mailbox = _mailbox(request, form) if every else None
        if not every and not ids:
            request.session["flash"] = {"kind": "error", "text": "tick the held deletes to decide, or use the 'all' button"}
            return RedirectResponse("/deletes", status_code=303)
        return await act(request, user, f"deletes.{decision}", lambda: backend.decide_deletes(decision, ids, mailbox),
                         "/deletes", ids=ids, mailbox=mailbox)

    @page
    async def events_page(request: Request, user: str, form: Any) -> Response:
        q = request.query_params
        filters = {k: (q.get(k) or "").strip() or None for k in ("status", "mailbox", "record", "since")}
        before = q.get("before")
        try:
            rows = await run_in_threadpool(backend.events, filters["status"], filters["mailbox"], filters["record"],
                                           filters["since"], int(before) if before and before.isdigit() else None, PAGE)
            error = None
        except CrmsyncError as exc:
            rows, error = [], str(exc)
        more = urlencode({**{k: v for k, v in filters.items() if v}, "before": rows[-1]["id"]}) if len(rows) == PAGE else None
        return render(request, "events.html", rows=rows, filters=filters, error=error, more=more,
                      statuses=("pending", "published", "applied", "skipped", "failed", "dead"))

    @page
    async def event_page(request: Request, user: str, form: Any) -> Response:
        event = await run_in_threadpool(backend.event, int(request.path_params["eid"]))
        if event is None:
            return render(request, "message.html", status_code=404, text="no such event")
        return render(request, "event.html", event=event)

    @page
    async def events_replay(request: Request, user: str, form: dict[str, Any]) -> Response:
        one = form.get("event_id")
        ids = [int(one)] if one and str(one).isdigit() else None
        mailbox = _mailbox(request, form) if ids is None else None
        return await act(request, user, "events.replay", lambda: backend.replay(ids, mailbox),
                         f"/events/{ids[0]}" if ids else "/events?status=dead", ids=ids or "all dead")

    @page
    async def history_page(request: Request, user: str, form: Any) -> Response:
        record = request.query_params.get("record", "").strip()
        found, error = None, None
        if record:
            try:
                found = await run_in_threadpool(backend.history, record, _mailbox(request))
            except CrmsyncError as exc:
                error = str(exc)
        return render(request, "history.html", record=record, found=found, error=error)

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        Route("/", overview),
        Route("/link", link_page),
        Route("/link/add", link_add, methods=["POST"]),
        Route("/link/remove", link_remove, methods=["POST"]),
        Route("/review", review_page),
        Route("/review/{rid:int}/accept", review_accept, methods=["POST"]),
        Route("/review/{rid:int}/reject", review_reject, methods=["POST"]),
        Route("/conflicts", conflicts_page),
        Route("/conflicts/{cid:int}/resolve", conflict_resolve, methods=["POST"]),
        Route("/deletes", deletes_page),
        Route("/deletes/decide", deletes_decide, methods=["POST"]),
        Route("/events", events_page),
        Route("/events/replay", events_replay, methods=["POST"]),
        Route("/events/{eid:int}", event_page),
        Route("/history", history_page),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret_key, session_cookie="crmsync_console",
                             max_age=8 * 3600, same_site="strict", https_only=https)]
    return Starlette(routes=routes, middleware=middleware)


#: the paths a test must find refused without a session (GET pages and POST actions)
PAGES = ("/", "/link", "/review", "/conflicts", "/deletes", "/events", "/events/1", "/history")
ACTIONS = ("/logout", "/link/add", "/link/remove", "/review/1/accept", "/review/1/reject", "/conflicts/1/resolve",
           "/deletes/decide", "/events/replay")
