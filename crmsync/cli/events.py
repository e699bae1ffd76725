"""``crmsync events ...`` and ``crmsync history``: the event log for the people who run crmsync.

The state database is the record (DESIGN.md §1): what was synced, what failed and why, what was
written, and replay through the same publisher the producer uses.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import typer
from rich.table import Table

from crmsync.errors import CrmsyncError

events_app = typer.Typer(
    name="events",
    help="The event log: every change crmsync saw, its status (pending, published, applied, "
         "skipped, failed, dead), its last error and what it wrote. List, show, replay, purge.",
    no_args_is_help=True,
)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


_RELATIVE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A moment given as ISO 8601 (a date, or a date and time; without an offset it is UTC) or
    as an age: ``30m``, ``12h``, ``7d``, ``2w`` ago."""
    now = now or datetime.now(UTC)
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m["unit"]]: float(m["n"])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CrmsyncError(f"time {text!r}: give ISO 8601 (2026-12-01, 2026-12-01T08:00, "
                           "2026-12-01T08:00+01:00) or an age (30m, 12h, 7d, 2w)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _engine_and_settings():
    from crmsync.cli.app import ready_container

    c = ready_container()
    return c.state_engine, c


def _out():
    from crmsync.cli.app import console

    return console


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ("" if value is None else str(value))


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _emit_rows(rows: list[dict[str, Any]], fmt: Format) -> bool:
    """JSON or CSV of ``rows`` to stdout (True), or False for the caller's table."""
    if fmt is Format.json:
        typer.echo(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows], indent=2))
        return True
    if fmt is Format.csv:
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _plain(v) for k, v in r.items()} for r in rows)
        typer.echo(buf.getvalue(), nl=False)
        return True
    return False


def _error_text(row: dict[str, Any]) -> str:
    """The last error of an event still to be done (an applied one keeps it for `show`)."""
    return "" if row["status"] in ("applied", "skipped") else (row.get("last_error") or "")


def _events_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "status", "source", "mailbox", "record", "tries", "outcome", "created"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "status", "tries", "created"))
    table.add_column("last error", overflow="fold")
    for r in rows:
        source = r["source"] if r["op"] == "upsert" else f"{r['source']} {r['op']}"
        table.add_row(str(r["id"]), r["status"], source, r["mailbox"], r["crm_key"] or r["item_id"] or "",
                      str(r["attempts"]), r["outcome"] or "", _when(r["created_at"]), _error_text(r))
    return table


def _query(status: str | None, mailbox: str | None, since: str | None, record: str | None,
           limit: int | None, ids: tuple[int, ...] = ()):
    from crmsync.adapters.state.event_log import EventQuery

    try:
        return EventQuery(status=status, mailbox=mailbox, since=parse_when(since) if since else None,
                          record=record, ids=ids, limit=limit)
    except ValueError as exc:
        raise CrmsyncError(str(exc)) from None


_STATUS_HELP = ("pending | published | applied | skipped (applied without a write: private or gone) | "
                "failed (an attempt failed, a retry is due) | dead")


@events_app.command("list")
def list_command(
    status: str | None = typer.Option(None, "--status", "-s", help=_STATUS_HELP),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    since: str | None = typer.Option(None, "--since", help="created at or after: ISO 8601 or an age (12h, 7d)"),
    record: str | None = typer.Option(None, "--record", "-r", help="a CRM key (account:A-1) or an Exchange ItemId"),
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="at most this many, newest first"),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, or json/csv for scripts"),
) -> None:
    """List events, newest first, with their status and last error."""
    from crmsync.adapters.state.event_log import list_events

    engine, _ = _engine_and_settings()
    rows = list_events(engine, _query(status, mailbox, since, record, limit))
    if not _emit_rows(rows, fmt):
        _out().print(_events_table(rows, f"events ({len(rows)} shown, newest first)"))


@events_app.command("show")
def show_command(
    event_id: int = typer.Argument(..., help="the event id (from `crmsync events list`)"),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, or json for scripts"),
) -> None:
    """Everything about one event, with its error and what it wrote.

    Keys, status, times, attempts, the last error (class, record, field, message) and, once
    applied, each field written with its side and old and new value."""
    from crmsync.adapters.state.event_log import show_event

    engine, _ = _engine_and_settings()
    event = show_event(engine, event_id)
    if event is None:
        raise CrmsyncError(f"event {event_id}: no such event in the state database")
    if fmt is Format.json:
        typer.echo(json.dumps({k: ([{a: _plain(b) for a, b in c.items()} for c in v] if k == "changes" else _plain(v))
                               for k, v in event.items()}, indent=2))
        return
    if fmt is Format.csv:
        _emit_rows(_change_rows(event["changes"]), fmt)
        return
    out = _out()
    facts = Table(title=f"event {event_id}", show_header=False)
    facts.add_column("", style="bold")
    facts.add_column("", overflow="fold")
    for label, key in (("status", "status"), ("source", "source"), ("mailbox", "mailbox"), ("op", "op"),
                       ("CRM key", "crm_key"), ("ItemId", "item_id"), ("attempts", "attempts"),
                       ("outcome", "outcome"), ("created", "created_at"), ("published", "published_at"),
                       ("applied", "applied_at"), ("last failure", "failed_at"),
                       ("error class", "error_class"), ("error record", "error_record"),
                       ("error field", "error_field"), ("last error", "last_error")):
        if key == "last_error" and event["status"] in ("applied", "skipped"):
            label = "last error (before it was applied)"
        value = event.get(key)
        if value is not None and value != "":
            facts.add_row(label, _when(value))
    out.print(facts)
    if event["changes"]:
        out.print(_changes_table(event["changes"], "written"))
    elif event["status"] == "applied":
        out.print("written: nothing (both sides already held the change)")


def _change_rows(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("at", "mailbox", "crm_key", "action", "side", "field", "old_value", "new_value")}
            | ({"event_ids": ",".join(str(i) for i in c["event_ids"] if i is not None)} if "event_ids" in c else {})
            for c in changes]


def _changes_table(changes: list[dict[str, Any]], title: str) -> Table:
    with_events = any("event_ids" in c for c in changes)
    table = Table(title=title)
    for column in ("at", *(("events",) if with_events else ()), "action", "side", "field", "old", "new"):
        table.add_column(column, overflow="fold")
    for c in changes:
        events = (",".join(str(i) for i in c["event_ids"] if i is not None),) if with_events else ()
        table.add_row(_when(c["at"]), *events, c["action"], c["side"] or "", c["field"] or "(whole record)",
                      "" if c["old_value"] is None else c["old_value"],
                      "" if c["new_value"] is None else c["new_value"])
    return table


@events_app.command("replay")
def replay_command(
    event_ids: list[int] = typer.Argument(None, help="event ids to replay"),
    status: str | None = typer.Option(None, "--status", "-s", help=f"replay every event with this status: {_STATUS_HELP}"),
    since: str | None = typer.Option(None, "--since", help="replay events created at or after: ISO 8601 or an age (12h)"),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be replayed, change nothing"),
) -> None:
    """Publish events to the workers again (dead letters once fixed, or any others).

    Attempts are reset. The worker re-reads both sides, so an event whose change is already in
    place writes nothing; a dead letter whose record was fixed is applied. Replaces the old
    `crmsync replay` (`--all-dead` is now `--status dead`)."""
    from crmsync.adapters.state.event_log import list_events, matching_ids, requeue

    if not event_ids and status is None and since is None:
        raise CrmsyncError("nothing to replay: give event ids, --status S or --since T")
    engine, c = _engine_and_settings()
    query = _query(status, mailbox, since, None, None, tuple(event_ids or ()))
    ids = matching_ids(engine, query)
    missing = sorted(set(event_ids or ()) - set(ids)) if event_ids and status is None and since is None else []
    if missing:
        raise CrmsyncError(f"no such event(s): {', '.join(map(str, missing))}")
    out = _out()
    if dry_run:
        rows = list_events(engine, _query(None, None, None, None, None, tuple(ids))) if ids else []
        out.print(_events_table(rows, f"would replay {len(ids)} event(s) (dry run)"))
        return
    if not ids:
        out.print("nothing matched: 0 events replayed")
        return
    from producers.publisher import CeleryPublisher

    requeued = requeue(engine, ids)
    sent = CeleryPublisher.from_settings(c.settings).publish(c.store, requeued)
    out.print(f"replayed {sent} of {len(ids)} event(s)"
              + ("" if sent == len(ids) else "; the rest stay pending and the re-drive sends them"))


@events_app.command("purge")
def purge_command(
    before: str | None = typer.Option(None, "--before", help="delete applied/skipped events finished before "
                                      "this (ISO 8601 or an age, 30d); default: [state] keep_applied_days ago"),
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be deleted, delete nothing"),
) -> None:
    """Delete applied and skipped events older than the retention.

    Their field diffs go with them. Pending, failed and dead events are never purged."""
    from crmsync.adapters.state.event_log import purge

    engine, c = _engine_and_settings()
    cutoff = parse_when(before) if before else datetime.now(UTC) - timedelta(days=c.settings.state.keep_applied_days)
    n = purge(engine, cutoff, dry_run=dry_run)
    _out().print(f"{'would purge' if dry_run else 'purged'} {n} applied/skipped event(s) finished before "
                 f"{_when(cutoff)} UTC")


_RESOLVED = {"crm": "the CRM's value kept", "exchange": "Exchange's value kept", "held": "held for a person"}


def history_command(
    record: str = typer.Argument(..., help="a CRM key (account:A-1, contact:7) or an Exchange ItemId"),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, or json/csv for scripts"),
) -> None:
    """Every change crmsync made to one record, with field diffs and conflicts.

    Oldest first: which side was written, each field's old and new value, and the conflicts
    with how they were resolved."""
    from crmsync.adapters.state.event_log import history

    engine, _ = _engine_and_settings()
    found = history(engine, record, mailbox)
    if not found["keys"]:
        raise CrmsyncError(f"{record}: no link and no logged change in the state database "
                           "(give a CRM key such as account:A-1, or an Exchange ItemId)")
    if fmt is Format.json:
        typer.echo(json.dumps({
            "record": record, "links": [{"mailbox": mb, "crm_key": key} for mb, key in found["keys"]],
            "changes": [{k: _plain(v) for k, v in c.items()} for c in _change_rows(found["changes"])],
            "conflicts": [{k: _plain(v) for k, v in c.items() if k != "id"} for c in found["conflicts"]],
        }, indent=2))
        return
    if fmt is Format.csv:
        _emit_rows(_change_rows(found["changes"]), fmt)
        return
    out = _out()
    keys = ", ".join(f"{key} in {mb}" for mb, key in found["keys"])
    out.print(_changes_table(found["changes"], f"changes crmsync made to {keys}"))
    if not found["conflicts"]:
        out.print("conflicts: none")
        return
    table = Table(title="conflicts")
    for column in ("at", "field", "CRM value", "Exchange value", "resolved"):
        table.add_column(column, overflow="fold")
    for c in found["conflicts"]:
        table.add_row(_when(c["at"]), c["field"], c["crm_value"] or "", c["exchange_value"] or "",
                      _RESOLVED.get(c["chosen"], c["chosen"]))
    out.print(table)
