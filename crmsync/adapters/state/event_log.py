"""The event log's queries and bookkeeping: listing, one event in full, replay, purge, a
record's history, and the rows a link commit writes about what it changed.

The ``events.status`` column keeps the lifecycle the workers and the re-drive rely on (pending,
published, applied, dead); the log shows two more, derived: ``failed`` (an attempt failed, a
retry is due) and ``skipped`` (finished without a write: a private contact, or nothing left on
either side).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, func, or_, select, update

from crmsync.adapters.database import read_tx, write_tx
from crmsync.ports import LinkUpdate
from schemas.state_tables import conflicts, event_changes, events, links

STATUSES = ("pending", "published", "applied", "skipped", "failed", "dead")
#: Outcomes of applied events that wrote nothing because there was nothing to sync to.
SKIPPED_OUTCOMES = ("private-skipped", "gone")
#: Events that are done: ``purge`` removes these (dead letters stay until replayed).
FINISHED = ("applied", "skipped")
_BATCH = 500

#: The status the event log shows (see the module docstring).
shown_status = case(
    (and_(events.c.status == "applied", events.c.outcome.in_(SKIPPED_OUTCOMES)), "skipped"),
    (and_(events.c.status.in_(("pending", "published")), events.c.attempts > 0), "failed"),
    else_=events.c.status,
).label("shown_status")

_linked = links.alias("linked")
#: The CRM key of an Exchange event, through its link (an event from Outlook names only the item).
_record_key = func.coalesce(events.c.crm_key, _linked.c.crm_key).label("record_key")
_with_link = events.outerjoin(_linked, and_(_linked.c.mailbox == events.c.mailbox,
                                            _linked.c.item_id == events.c.item_id))

_LIST_COLUMNS = (events.c.id, events.c.source, events.c.mailbox, events.c.op, _record_key,
                 events.c.item_id, shown_status, events.c.attempts, events.c.outcome,
                 events.c.created_at, events.c.published_at, events.c.applied_at, events.c.failed_at,
                 events.c.error_class, events.c.error_record, events.c.error_field, events.c.last_error)


@dataclass(frozen=True)
class EventQuery:
    """Which events: every given criterion must hold; ``record`` is a CRM key or an ItemId."""

    status: str | None = None
    mailbox: str | None = None
    since: datetime | None = None
    record: str | None = None
    ids: tuple[int, ...] = ()
    limit: int | None = 100
    #: only events with a smaller id (keyset pagination, newest first)
    before_id: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}: one of {', '.join(STATUSES)}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since must be timezone-aware")


def _where(q: EventQuery) -> list[Any]:
    cond: list[Any] = []
    if q.status is not None:
        cond.append(shown_status == q.status)
    if q.mailbox is not None:
        cond.append(events.c.mailbox == q.mailbox)
    if q.since is not None:
        cond.append(events.c.created_at >= q.since)
    if q.record is not None:
        cond.append(or_(events.c.crm_key == q.record, events.c.item_id == q.record,
                        _linked.c.crm_key == q.record))
    if q.ids:
        cond.append(events.c.id.in_(q.ids))
    if q.before_id is not None:
        cond.append(events.c.id < q.before_id)
    return cond


def list_events(engine: Engine, query: EventQuery) -> list[dict[str, Any]]:
    """The matching events, newest first, with the status the log shows as ``status``."""
    stmt = (select(*_LIST_COLUMNS).select_from(_with_link).where(*_where(query))
            .order_by(events.c.id.desc()))
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    with read_tx(engine) as conn:
        return [_row(r._mapping) for r in conn.execute(stmt)]


def matching_ids(engine: Engine, query: EventQuery) -> list[int]:
    """The ids of the matching events, oldest first (what a replay sends)."""
    stmt = select(events.c.id).select_from(_with_link).where(*_where(query)).order_by(events.c.id)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    with read_tx(engine) as conn:
        return [int(i) for i in conn.execute(stmt).scalars()]


def show_event(engine: Engine, event_id: int) -> dict[str, Any] | None:
    """Everything about one event: its row, its error, and the field diffs its apply wrote
    (``changes``, oldest first)."""
    stmt = (select(*_LIST_COLUMNS, events.c.dedup_key).select_from(_with_link)
            .where(events.c.id == event_id))
    with read_tx(engine) as conn:
        row = conn.execute(stmt).first()
        if row is None:
            return None
        changes = conn.execute(select(event_changes).where(event_changes.c.event_id == event_id)
                               .order_by(event_changes.c.id)).all()
    out = _row(row._mapping)
    out["changes"] = [c for r in changes for c in _changes(r._mapping)]
    return out


def requeue(engine: Engine, event_ids: Iterable[int]) -> list[int]:
    """Any events -> pending with attempts reset, ready to be published again (replay). The
    worker re-reads both sides, so an event whose change is already in place writes nothing."""
    out: list[int] = []
    ids = list(event_ids)
    with write_tx(engine) as conn:
        for start in range(0, len(ids), _BATCH):
            out.extend(int(x) for x in conn.execute(
                update(events).where(events.c.id.in_(ids[start:start + _BATCH]))
                .values(status="pending", attempts=0, published_at=None)
                .returning(events.c.id)).scalars())
    return sorted(out)


def purge(engine: Engine, before: datetime, *, dry_run: bool = False) -> int:
    """Delete applied and skipped events finished before ``before`` (with their field diffs);
    returns how many. Pending, failed and dead events are never purged."""
    old = and_(events.c.status == "applied", events.c.applied_at < before)
    with write_tx(engine) as conn:
        ids = [int(i) for i in conn.execute(select(events.c.id).where(old)).scalars()]
        if dry_run:
            return len(ids)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            conn.execute(delete(event_changes).where(event_changes.c.event_id.in_(chunk)))
            conn.execute(delete(events).where(events.c.id.in_(chunk)))
    return len(ids)


def history(engine: Engine, record: str, mailbox: str | None = None) -> dict[str, Any]:
    """Every change crmsync made to one record (a CRM key, or an ItemId resolved through its
    link), per mailbox: the field diffs by side (oldest first) and the conflicts with how they
    were resolved. ``keys`` lists the (mailbox, crm_key) pairs found."""
    with read_tx(engine) as conn:
        keys = _resolve(conn, record, mailbox)
        changes: list[dict[str, Any]] = []
        found_conflicts: list[dict[str, Any]] = []
        for mb, key in keys:
            changes.extend(c for r in conn.execute(
                select(event_changes).where(event_changes.c.mailbox == mb, event_changes.c.crm_key == key)
                .order_by(event_changes.c.at, event_changes.c.id)) for c in _changes(r._mapping))
            found_conflicts.extend(dict(r._mapping) for r in conn.execute(
                select(conflicts).where(conflicts.c.mailbox == mb, conflicts.c.crm_key == key)
                .order_by(conflicts.c.at, conflicts.c.id)))
    return {"record": record, "keys": keys, "changes": _one_per_write(changes),
            "conflicts": found_conflicts}


def _resolve(conn: Connection, record: str, mailbox: str | None) -> list[tuple[str, str]]:
    by = or_(links.c.crm_key == record, links.c.item_id == record)
    stmt = select(links.c.mailbox, links.c.crm_key).where(by)
    if mailbox is not None:
        stmt = stmt.where(links.c.mailbox == mailbox)
    keys = {(mb, key) for mb, key in conn.execute(stmt)}
    logged = select(event_changes.c.mailbox, event_changes.c.crm_key).where(
        or_(event_changes.c.crm_key == record, event_changes.c.item_id == record)).distinct()
    if mailbox is not None:
        logged = logged.where(event_changes.c.mailbox == mailbox)
    keys.update((mb, key) for mb, key in conn.execute(logged))
    return sorted(keys)


def _one_per_write(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A commit that applied several events of one record logs its diffs once per event; the
    history shows each write once, naming all of its events."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in changes:
        k = (c["mailbox"], c["crm_key"], c["at"], c["side"], c["field"], c["old_value"], c["new_value"])
        if k in out:
            out[k]["event_ids"].append(c["event_id"])
        else:
            out[k] = {**c, "event_ids": [c["event_id"]]}
    return list(out.values())


# --------------------------------------------------------------------------- written by a commit

def write_changes(conn: Connection, committed: Iterable[tuple[Any, LinkUpdate]], now: datetime) -> None:
    """In the link commit's transaction: one row per event with the fields written (the diffs);
    a link turning private takes its logged values with it (nothing of a private contact stays)."""
    rows: list[dict[str, Any]] = []
    for link, update_ in committed:
        if update_.private:
            conn.execute(delete(event_changes).where(event_changes.c.mailbox == link.mailbox,
                                                     event_changes.c.crm_key == link.crm_key))
            continue
        if not update_.writes or update_.action is None:
            continue
        writes = json.dumps([[w.side, w.field, w.old, w.new] for w in update_.writes], ensure_ascii=False)
        rows.extend({"event_id": event_id, "mailbox": link.mailbox, "crm_key": link.crm_key,
                     "item_id": update_.item_id, "action": update_.action, "writes": writes, "at": now}
                    for event_id in update_.event_ids or (None,))
    if rows:
        conn.execute(event_changes.insert(), rows)


# --------------------------------------------------------------------------- errors

_NOTE = re.compile(r"^while writing (?P<fields>.+) of (?P<record>\S+) to the (?P<side>crm|exchange)$")
_FIELD = re.compile(r"\bfield[s]? '?(?P<field>[a-z_]+)'?")


def error_parts(exc: BaseException) -> dict[str, str | None]:
    """The event log's view of an error: its class, one readable line (a database error's
    driver message, never the SQL and its parameters), and the record and field when known."""
    orig = getattr(exc, "orig", None)      # a SQLAlchemy DBAPIError wraps the driver's error
    if orig is not None:                   # its first line: no SQL, no parameters, no DETAIL row
        lines = str(orig).strip().splitlines()
        text = lines[0] if lines else type(orig).__name__
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    record = field = None
    for note in getattr(exc, "__notes__", ()):
        m = _NOTE.match(note)
        if m:
            record, field = m["record"], m["fields"]
            text = f"{text} ({note})"
    if field is None:
        m = _FIELD.search(text)
        field = m["field"] if m else None
    return {"error_class": type(orig if orig is not None else exc).__name__, "message": text,
            "error_record": record, "error_field": field}


def record_errors(engine: Engine, errors: Mapping[int, BaseException], now: datetime | None = None) -> None:
    """Keep each failed event's error taken apart (class, record, field, when); the record
    defaults to the event's own key."""
    if not errors:
        return
    now = now or datetime.now(UTC)
    with write_tx(engine) as conn:
        for event_id, exc in errors.items():
            parts = error_parts(exc)
            conn.execute(update(events).where(events.c.id == event_id).values(
                error_class=parts["error_class"], error_field=parts["error_field"], failed_at=now,
                error_record=parts["error_record"] or func.coalesce(events.c.crm_key, events.c.item_id)))


# --------------------------------------------------------------------------- rows out

_RENAMED = {"shown_status": "status", "record_key": "crm_key"}


def _row(m: Mapping[str, Any]) -> dict[str, Any]:
    return {_RENAMED.get(k, k): v for k, v in m.items()}


def _changes(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One logged commit as one dict per field written (side, field, old_value, new_value)."""
    common = {k: m[k] for k in ("event_id", "mailbox", "crm_key", "item_id", "action", "at")}
    return [{**common, "side": side, "field": field, "old_value": old, "new_value": new}
            for side, field, old, new in json.loads(m["writes"])]
