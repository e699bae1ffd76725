"""``crmsync console`` and ``crmsync console add-user``: the web console, wired.

The console app (``crmsync.console``) knows only the :class:`~crmsync.console.app.Backend` it is
given; this module builds it on the container from the same services and adapters the CLI
commands use (``link``, ``review``, ``conflicts``, ``deletes``, ``events``, ``history``,
``status``, ``doctor``), so a rule lives in one place.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import structlog
import typer

from crmsync.errors import CrmsyncError

log = structlog.get_logger("crmsync.console")

console_app = typer.Typer(
    help="The web console: overview, linking, review, conflicts, held deletes, dead letters, history. "
         "`crmsync console` serves it (login required; add users with `crmsync console add-user NAME`).",
    invoke_without_command=True,
)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


class ContainerBackend:
    """The console's reads and actions on a container (``crmsync.console.app.Backend``)."""

    #: doctor's checks probe Exchange and the workers (seconds); the overview shows the last
    #: result and refreshes it in the background once it is older than this
    CHECKS_TTL_S = 30.0

    def __init__(self, container) -> None:
        import threading

        self.c = container
        self._checks: tuple[float, str, list[dict[str, str]]] | None = None
        self._checks_lock = threading.Lock()
        self._refreshing = False

    def _refresh_checks(self) -> None:
        import time

        from crmsync.cli.doctor import check_rows, deployment_checks

        try:
            rows = check_rows(deployment_checks(self.c))
            with self._checks_lock:
                self._checks = (time.monotonic(), f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}", rows)
        finally:
            self._refreshing = False

    def doctor_checks(self) -> tuple[str, list[dict[str, str]]]:
        """(when checked, doctor's check rows): the first call waits for them, later ones answer
        from the last result and start a refresh in the background when it is stale."""
        import threading
        import time

        if self._checks is None:
            self._refresh_checks()
        assert self._checks is not None
        at, when, rows = self._checks
        if time.monotonic() - at > self.CHECKS_TTL_S and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh_checks, name="console-doctor", daemon=True).start()
        return when, rows

    # -- shared wiring of the CLI
    def _linking(self):
        from crmsync.cli.linking import linking_service

        return linking_service(self.c)

    def _review(self):
        from crmsync.cli.policy import _review

        return _review(self.c)

    def _queue(self):
        from crmsync.cli.policy import _queue

        return _queue(self.c)

    def _carry_out(self, events: list[int]) -> int:
        """Apply the decision's events now; the number left to the workers."""
        from crmsync.service.apply import apply_events

        failed: dict[int, BaseException] = {}
        for start in range(0, len(events), 50):
            failed.update(apply_events(self.c.sync_services, events[start:start + 50]).errors)
        return len(failed)

    def mailboxes(self) -> list[str]:
        return [m.address for m in self.c.settings.mailboxes]

    # -- overview
    def overview(self) -> dict[str, Any]:
        from crmsync.adapters.broker import queue_depths
        from crmsync.adapters.state.status import attention, current_lag
        from crmsync.cli.linking import first_sync_waiting

        now = datetime.now(UTC)
        trouble = attention(self.c.state_engine)
        lag = current_lag(self.c.state_engine, now)
        held: dict[str, int] = {}
        for row in self._review().pending():
            held[row.mailbox] = held.get(row.mailbox, 0) + 1
        conflicts: dict[str, int] = {}
        for row in self._queue().pending():
            conflicts[row.mailbox] = conflicts.get(row.mailbox, 0) + 1
        reviews = self.review_counts()
        rows = []
        summary = {row["mailbox"]: row for row in self.c.store.status_summary()}
        for mb in self.mailboxes():   # a configured mailbox nothing happened in yet has a row too
            summary.setdefault(mb, {"mailbox": mb, "links": 0, "pending": 0, "published": 0, "applied": 0,
                                    "dead": 0, "last_synced_at": None})
        for row in sorted(summary.values(), key=lambda r: r["mailbox"]):
            extra = trouble.get(row["mailbox"], {})
            sides = lag.get(row["mailbox"], {})
            rows.append({**row, "last_sync": f"{row['last_synced_at']:%Y-%m-%d %H:%M:%S}" if row["last_synced_at"] else None,
                         "lag_to_exchange": _seconds(sides.get("crm->exchange", 0.0)),
                         "lag_to_crm": _seconds(sides.get("exchange->crm", 0.0)),
                         "retrying": extra.get("retrying", 0) + extra.get("failed", 0),
                         "held_deletes": held.get(row["mailbox"], 0), "conflicts": conflicts.get(row["mailbox"], 0),
                         "review": reviews.get(row["mailbox"], 0)})
        checks_at, checks = self.doctor_checks()
        depths, why = queue_depths(self.c.settings)
        queues = ("broker queues: " + ", ".join(f"{name} {count}" for name, count in depths.items())
                  + " message(s) waiting" if depths else f"broker queues: unknown ({why})")
        unavailable = [f"{mb} since {row['since']}: {row['error']}"
                       for mb, row in sorted(self.c.mailbox_health.unavailable().items())]
        return {"now": f"{now:%Y-%m-%d %H:%M:%S}", "rows": rows, "queues": queues,
                "waiting": first_sync_waiting(self.c), "unavailable": unavailable,
                "checks_at": checks_at, "checks": checks}

    # -- linking
    def suggestions(self, mailbox: str, text: str) -> list[dict[str, Any]]:
        from crmsync.cli.linking import _evidence
        from crmsync.service.linking import LinkError, display_name

        try:
            found = self._linking().suggest_for(mailbox, text)
        except LinkError:
            return []
        rows: list[dict[str, Any]] = []
        for key, rec, cands in found[:50]:
            base = {"crm_key": key, "crm_name": display_name(rec.record), "linked_to": None}
            if not cands:
                rows.append({**base, "item_id": None, "outlook_name": "", "score": "", "agree": "", "disagree": ""})
            for cand, item in cands[:5]:
                rows.append({**base, "item_id": cand.exchange_key, "outlook_name": display_name(item.record),
                             "score": f"{cand.score:.2f}", "agree": _evidence(cand, True),
                             "disagree": _evidence(cand, False)})
        return rows

    def search_folder(self, mailbox: str, text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the folder's contacts matching ``text``, the CRM records suggested for the unlinked
        ones among them): one search of the folder serves both (issue 12)."""
        from crmsync.cli.linking import _evidence
        from crmsync.service.linking import LinkError, display_name

        service = self._linking()
        try:
            hits = service.search(mailbox, text)
            found = service.suggest_for_contacts(mailbox, text, hits=hits) if any(not h.linked_to for h in hits) else []
        except LinkError:
            return [], []
        rows = [{"item_id": h.item.item_id, "name": display_name(h.item.record), "email": h.item.record.email or "",
                 "phone": h.item.record.phone_mobile or h.item.record.phone_business or "",
                 "matched": ", ".join(h.matched), "linked_to": h.linked_to} for h in hits[:200]]
        unlinked: list[dict[str, Any]] = []
        for item_id, item, cands in found[:50]:
            base = {"item_id": item_id, "outlook_name": display_name(item.record)}
            if not cands:
                unlinked.append({**base, "crm_key": None, "crm_name": "", "score": "", "agree": "", "disagree": ""})
            for cand, rec in cands[:5]:
                unlinked.append({**base, "crm_key": cand.crm_key, "crm_name": display_name(rec.record),
                                 "score": f"{cand.score:.2f}", "agree": _evidence(cand, True),
                                 "disagree": _evidence(cand, False)})
        return rows, unlinked

    def links(self, mailbox: str, after_id: int, limit: int, text: str) -> list[dict[str, Any]]:
        from crmsync.adapters.state.links_query import links_page

        rows = links_page(self.c.state_engine, mailbox, after_id, limit, text)
        for r in rows:
            r["state"] = ("private (unlinked)" if r["private"] else "deleted" if r["deleted"]
                          else "contact not created yet" if r["item_id"] is None
                          else "synced" if r["synced"] else "linked, not synced yet")
            if r["private"]:
                r["item_id"] = None
        return rows

    def link(self, mailbox: str, crm_key: str, item_id: str) -> str:
        link = self._linking().link(mailbox, crm_key, item_id)
        return f"linked {link.crm_key} and {link.item_id} in {mailbox}: the next sync merges them"

    def unlink(self, mailbox: str, key_or_item: str) -> str:
        gone = self._linking().unlink(mailbox, key_or_item)
        return f"removed the link of {gone.crm_key} in {mailbox}"

    # -- the review queue of new records (``crmsync.service.review``, as `crmsync review`)
    def review_counts(self) -> dict[str, int]:
        from crmsync.service import review

        return review.counts(self.c.review_queue, self.c.store)

    def review_items(self, mailbox: str | None) -> list[Any]:
        from crmsync.service import review

        return review.list_items(self.c.review_queue, mailbox, self.c.store)

    def review_accept(self, item_id: int, candidate: str | None, by: str) -> str:
        from crmsync.service import review

        row, events = review.accept(self.c.review_queue, self.c.store, item_id, candidate, by, lambda: datetime.now(UTC))
        left = self._carry_out(events)
        return (f"review item {row.id}: {row.record_key} linked to {row.chosen}; "
                + ("left to the workers (retried by the re-drive)" if left else "the sync merges them"))

    def review_reject(self, item_id: int, by: str) -> str:
        from crmsync.service import review

        row, events = review.reject(self.c.review_queue, self.c.store, item_id, by, lambda: datetime.now(UTC))
        left = self._carry_out(events)
        return (f"review item {row.id}: {row.record_key} rejected, created on the other side"
                + ("; left to the workers (retried by the re-drive)" if left else ""))

    # -- conflicts and deletes
    def conflicts(self, mailbox: str | None) -> list[Any]:
        return self._queue().pending(mailbox)

    def resolve(self, conflict_id: int, take: str | None, value: str | None, by: str) -> str:
        row, events = self._queue().resolve(conflict_id, take, value, by)  # type: ignore[arg-type]
        left = self._carry_out(events)
        return (f"conflict {row.id} ({row.crm_key} {row.field}) resolved; "
                + ("left to the workers (retried by the re-drive)" if left else "written on both sides"))

    def held_deletes(self, mailbox: str | None) -> list[Any]:
        return self._review().pending(mailbox)

    def decide_deletes(self, decision: str, ids: list[int] | None, mailbox: str | None) -> str:
        rows, events = self._review().decide(decision, ids, mailbox)  # type: ignore[arg-type]
        left = self._carry_out(events)
        verb = "approved" if decision == "approve" else "discarded"
        return (f"{len(rows)} held delete(s) {verb}; {len(events) - left} carried out now"
                + (f", {left} left to the workers" if left else ""))

    # -- events and history
    def events(self, status: str | None, mailbox: str | None, record: str | None, since: str | None,
               before_id: int | None, limit: int) -> list[dict[str, Any]]:
        from crmsync.adapters.state.event_log import EventQuery, list_events
        from crmsync.cli.events import parse_when

        try:
            query = EventQuery(status=status, mailbox=mailbox, record=record,
                               since=parse_when(since) if since else None, limit=limit, before_id=before_id)
        except ValueError as exc:
            raise CrmsyncError(str(exc)) from None
        return list_events(self.c.state_engine, query)

    def event(self, event_id: int) -> dict[str, Any] | None:
        from crmsync.adapters.state.event_log import show_event

        return show_event(self.c.state_engine, event_id)

    def replay(self, ids: list[int] | None, mailbox: str | None) -> str:
        from crmsync.adapters.state.event_log import EventQuery, matching_ids, requeue
        from producers.publisher import CeleryPublisher

        query = EventQuery(ids=tuple(ids), limit=None) if ids else EventQuery(status="dead", mailbox=mailbox, limit=None)
        found = matching_ids(self.c.state_engine, query)
        if ids and not found:
            raise CrmsyncError(f"no such event(s): {', '.join(map(str, ids))}")
        if not found:
            return "nothing matched: 0 events replayed"
        sent = CeleryPublisher.from_settings(self.c.settings).publish(self.c.store, requeue(self.c.state_engine, found))
        return (f"replayed {sent} of {len(found)} event(s)"
                + ("" if sent == len(found) else "; the rest stay pending and the re-drive sends them"))

    def history(self, record: str, mailbox: str | None) -> dict[str, Any]:
        from crmsync.adapters.state.event_log import history

        found = history(self.c.state_engine, record, mailbox)
        if not found["keys"]:
            raise CrmsyncError(f"{record}: no link and no logged change in the state database "
                               "(give a CRM key such as account:A-1, or an Exchange ItemId)")
        return found


def build_app(container, https: bool = False):
    """The console's ASGI app on ``container`` (the session key read or generated now)."""
    from crmsync.console.app import create_app
    from crmsync.console.users import session_key

    conf = container.settings.console
    return create_app(ContainerBackend(container), users_file=conf.users_file,
                      secret_key=session_key(conf.users_file, conf.secret_key()), https=https)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@console_app.callback()
def console(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: loopback only)"),
    port: int = typer.Option(8470, "--port", min=0, max=65535, help="port to listen on"),
    tls_cert: str | None = typer.Option(None, "--tls-cert", help="serve HTTPS with this certificate (PEM)"),
    tls_key: str | None = typer.Option(None, "--tls-key", help="the certificate's private key (PEM)"),
) -> None:
    """Serve the web console (login required). Bound to loopback unless --host says otherwise."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from crmsync.cli import app as cli

    if bool(tls_cert) != bool(tls_key):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    c = cli.ready_container()
    https = bool(tls_cert)
    if host not in LOOPBACK and not https:
        banner = (f"WARNING: the console listens on {host}:{port} WITHOUT TLS: passwords and session cookies "
                  "cross the network in clear text. Bind it to 127.0.0.1 (the default) behind a TLS reverse "
                  "proxy, or give --tls-cert/--tls-key.")
        cli.err.print(banner, style="bold red", markup=False, highlight=False)
        log.warning("console.insecure_bind", host=host, port=port)
    app = build_app(c, https=https)
    log.info("console.start", host=host, port=port, tls=https)
    uvicorn.run(app, host=host, port=port, log_level="warning", ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                proxy_headers=False, server_header=False)


@console_app.command("add-user")
def add_user_command(
    name: str = typer.Argument(..., help="the user name to log in with"),
) -> None:
    """Add a console user (or set a new password), reading the password from standard input
    (one line; at a terminal it is asked twice, not echoed). Only its argon2 hash is stored,
    in the users file the configuration names (console.users_file)."""
    from crmsync.cli import app as cli
    from crmsync.console.users import add_user, check_name

    check_name(name)
    users_file = cli.settings().console.users_file
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CrmsyncError("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    new = add_user(users_file, name, password)
    log.info("console.user_added" if new else "console.user_password_set", user=name)
    cli.console.print(f"console user {name} {'added' if new else 'given a new password'} in {users_file}",
                      markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(console_app, name="console")
