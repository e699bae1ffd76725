"""The state database through SQLAlchemy Core: ``StateStore`` of crmsync.ports.

Every method is one short transaction (BEGIN IMMEDIATE on SQLite for writes); leases are a
compare-and-set on the link row and are never held as a database lock (DESIGN.md §3.1).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from crmsync.adapters.database import read_tx, write_tx
from crmsync.adapters.state.event_log import write_changes
from crmsync.errors import BadRecord, LeaseTaken, Stale
from crmsync.ports import Event, Link, LinkUpdate, NewEvent
from schemas.canonical import CanonicalContact
from schemas.state_tables import conflicts, cursors, events, links

BATCH = 500

PENDING, PUBLISHED, APPLIED, DEAD = "pending", "published", "applied", "dead"


# Hot-path statements, built once: a worker runs several of these per event, and building a
# statement costs more Python time than executing it on SQLite.
_LINK_BY_KEY = select(links).where(links.c.mailbox == bindparam("mb"),
                                   links.c.crm_key == bindparam("key"))
_LINK_BY_ITEM = select(links).where(links.c.mailbox == bindparam("mb"),
                                    links.c.item_id == bindparam("item"))
_TAKE_LEASE = (   # free or expired only: an owner is one task execution, never shared
    update(links)
    .where(links.c.id == bindparam("lid"), or_(
        links.c.lease_owner.is_(None), links.c.lease_until.is_(None),
        links.c.lease_until <= bindparam("now")))
    .values(lease_owner=bindparam("owner"), lease_token=bindparam("token"),
            lease_until=bindparam("until"), fence=links.c.fence + 1)
    .returning(*links.c)
)
_RENEW = (update(links)
          .where(links.c.id == bindparam("lid"), links.c.lease_token == bindparam("token"))
          .values(lease_until=bindparam("until"))
          .returning(*links.c))
_NEW_LINK = links.insert().returning(*links.c)
_COMMIT_LINK_MANY = (  # for executemany, so without RETURNING
    update(links)
    .where(links.c.id == bindparam("lid"), links.c.lease_token == bindparam("token"))
    .values(item_id=bindparam("v_item_id"), change_key=bindparam("v_change_key"),
            crm_version=bindparam("v_crm_version"), base_json=bindparam("v_base_json"),
            crm_hash=bindparam("v_crm_hash"), exchange_hash=bindparam("v_exchange_hash"),
            deleted=bindparam("v_deleted"), private=bindparam("v_private"),
            synced_at=bindparam("v_synced_at"), lease_owner=None, lease_token=None, lease_until=None)
)
_COMMIT_LINK = _COMMIT_LINK_MANY.returning(*links.c)
_RELEASE = (update(links)
            .where(links.c.id == bindparam("lid"), links.c.lease_token == bindparam("token"))
            .values(lease_owner=None, lease_token=None, lease_until=None))
_EVENT_BY_ID = select(events).where(events.c.id == bindparam("eid"))
_MARK_APPLIED = (update(events).where(events.c.id == bindparam("eid"))
                 .values(status=APPLIED, applied_at=bindparam("at"), outcome=bindparam("outcome")))
_COUNT_ATTEMPT = (update(events).where(events.c.id == bindparam("eid"))
                  .values(attempts=events.c.attempts + 1, last_error=bindparam("err"))
                  .returning(events.c.attempts))


def _now() -> datetime:
    return datetime.now(UTC)


def _link(m: Mapping[str, Any]) -> Link:
    base = m["base_json"]
    return Link(
        id=int(m["id"]),
        mailbox=m["mailbox"],
        crm_key=m["crm_key"],
        item_id=m["item_id"],
        change_key=m["change_key"],
        crm_version=m["crm_version"],
        base=None if base is None else CanonicalContact.model_validate_json(base),
        crm_hash=m["crm_hash"],
        exchange_hash=m["exchange_hash"],
        lease_token=m["lease_token"],
        deleted=bool(m["deleted"]),
        synced_at=m["synced_at"],
        fence=int(m["fence"] or 0),
        private=bool(m["private"]),
        lease_until=m["lease_until"],
    )


def _event(m: Mapping[str, Any]) -> Event:
    return Event(
        id=int(m["id"]),
        source=m["source"],
        mailbox=m["mailbox"],
        op=m["op"],
        crm_key=m["crm_key"],
        item_id=m["item_id"],
        status=m["status"],
        attempts=int(m["attempts"]),
        last_error=m["last_error"],
        created_at=m["created_at"],
    )


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), BATCH):
        yield ids[i:i + BATCH]


class SqlStateStore:
    """Links, the event log, cursors and conflicts in a SQLite or PostgreSQL state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    # ----------------------------------------------------------------------------- events
    def add_events(self, new: list[NewEvent], cursor: tuple[str, str] | None = None) -> list[int]:
        """Insert events, skipping dedup_keys already present, and set ``cursor`` (name, value)
        in the same transaction. Returns the ids inserted now, ascending."""
        now = _now()
        rows = [
            {"source": e.source, "mailbox": e.mailbox, "op": e.op, "crm_key": e.crm_key,
             "item_id": e.item_id, "dedup_key": e.dedup_key, "status": PENDING, "attempts": 0,
             "created_at": now, "due_at": now}
            for e in new
        ]
        ids: list[int] = []
        with write_tx(self.engine) as conn:
            if rows:  # executemany: SQLAlchemy batches it into multi-row INSERT ... RETURNING
                stmt = (self._insert(events).on_conflict_do_nothing(index_elements=["dedup_key"])
                        .returning(events.c.id))
                ids.extend(int(x) for x in conn.execute(stmt, rows).scalars())
            if cursor is not None:
                self._set_cursor(conn, cursor[0], cursor[1], now)
        return sorted(ids)

    def get_event(self, event_id: int) -> Event | None:
        with read_tx(self.engine) as conn:
            row = conn.execute(_EVENT_BY_ID, {"eid": event_id}).first()
        return None if row is None else _event(row._mapping)

    def get_events(self, event_ids: list[int]) -> dict[int, Event]:
        """``get_event`` for a batch: the events found, by id."""
        found: dict[int, Event] = {}
        with read_tx(self.engine) as conn:
            for chunk in _chunks(list(event_ids)):
                for row in conn.execute(select(events).where(events.c.id.in_(chunk))):
                    found[int(row.id)] = _event(row._mapping)
        return found

    def mark_published(self, event_ids: list[int]) -> None:
        """pending -> published; a re-published (re-driven) event gets a new published_at.
        Never moves an applied or dead event back."""
        now = _now()
        with write_tx(self.engine) as conn:
            for chunk in _chunks(list(event_ids)):
                conn.execute(
                    update(events)
                    .where(events.c.id.in_(chunk), events.c.status.in_((PENDING, PUBLISHED)))
                    .values(status=PUBLISHED, published_at=now, due_at=now)
                )

    def mark_applied(self, event_id: int, outcome: str | None = None) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(_MARK_APPLIED, {"eid": event_id, "at": _now(), "outcome": outcome})

    def record_attempt(self, event_id: int, error: str | None) -> int:
        """Count one more attempt (and keep its error); returns the attempts so far."""
        with write_tx(self.engine) as conn:
            got = conn.execute(_COUNT_ATTEMPT, {"eid": event_id, "err": error}).scalar()
        if got is None:
            raise BadRecord(f"event {event_id}: no such event in the state database")
        return int(got)

    def mark_dead(self, event_id: int, error: str) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(update(events).where(events.c.id == event_id)
                         .values(status=DEAD, last_error=error))

    def events_to_redrive(self, older_than: datetime, limit: int, *,
                          lost_before: datetime | None = None,
                          now: datetime | None = None) -> list[Event]:
        """Pending or published events, oldest first, that are overdue: their delivery was due
        (published, or a retry's ETA passed) before ``older_than``. With ``lost_before`` (the
        broker lost its messages then), also those last sent before it whose delivery is due by
        ``now``: a retry still in back-off is left to its ETA either way."""
        due = func.coalesce(events.c.due_at, events.c.published_at, events.c.created_at)
        late = due < older_than
        if lost_before is not None:
            sent = func.coalesce(events.c.published_at, events.c.created_at)
            late = or_(late, (sent < lost_before) & (due <= (now or _now())))
        stmt = (select(events).where(events.c.status.in_((PENDING, PUBLISHED)), late)
                .order_by(events.c.id).limit(limit))
        with read_tx(self.engine) as conn:
            return [_event(r._mapping) for r in conn.execute(stmt)]

    def dead_letters(self, limit: int = 100) -> list[Event]:
        """Dead events, newest first."""
        stmt = select(events).where(events.c.status == DEAD).order_by(events.c.id.desc()).limit(limit)
        with read_tx(self.engine) as conn:
            return [_event(r._mapping) for r in conn.execute(stmt)]

    def requeue(self, event_ids: list[int]) -> list[int]:
        """Dead -> pending with attempts reset (replay); returns the ids actually requeued.
        The caller publishes them (or the re-drive will)."""
        out: list[int] = []
        with write_tx(self.engine) as conn:
            for chunk in _chunks(list(event_ids)):
                out.extend(int(x) for x in conn.execute(
                    update(events).where(events.c.id.in_(chunk), events.c.status == DEAD)
                    .values(status=PENDING, attempts=0, published_at=None, due_at=_now())
                    .returning(events.c.id)
                ).scalars())
        return sorted(out)

    # ----------------------------------------------------------------------------- cursors
    def synced_change_keys(self, mailbox: str, item_ids: list[str]) -> dict[str, str]:
        """item_id -> the ChangeKey its link was last synced at, for the linked ones."""
        out: dict[str, str] = {}
        with read_tx(self.engine) as conn:
            for start in range(0, len(item_ids), BATCH):
                part = item_ids[start:start + BATCH]
                rows = conn.execute(select(links.c.item_id, links.c.change_key).where(
                    links.c.mailbox == mailbox, links.c.item_id.in_(part),
                    links.c.change_key.is_not(None)))
                out.update({item_id: change_key for item_id, change_key in rows})
        return out

    def get_cursor(self, name: str) -> str | None:
        with read_tx(self.engine) as conn:
            return conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()

    def _set_cursor(self, conn: Connection, name: str, value: str, now: datetime) -> None:
        stmt = self._insert(cursors).values(name=name, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["name"],
                                          set_={"value": value, "updated_at": now})
        conn.execute(stmt)

    # ----------------------------------------------------------------------------- links
    def find_link(self, mailbox: str, *, crm_key: str | None = None,
                  item_id: str | None = None) -> Link | None:
        """The link of this mailbox by CRM key (if given) else by Exchange ItemId."""
        if crm_key is not None:
            stmt, params = _LINK_BY_KEY, {"mb": mailbox, "key": crm_key}
        elif item_id is not None:
            stmt, params = _LINK_BY_ITEM, {"mb": mailbox, "item": item_id}
        else:
            raise ValueError("find_link needs crm_key or item_id")
        with read_tx(self.engine) as conn:
            row = conn.execute(stmt, params).first()
        return None if row is None else _link(row._mapping)

    def links_for_mailbox(self, mailbox: str) -> list[Link]:
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(links).where(links.c.mailbox == mailbox).order_by(links.c.id))
            return [_link(r._mapping) for r in rows]

    def acquire(self, mailbox: str, crm_key: str, item_id: str | None, owner: str,
                ttl_seconds: float, now: datetime) -> Link:
        """Lease the (mailbox, crm_key) link, creating it when missing.

        Compare-and-set: the lease is taken iff it is free, expired, or already this owner's;
        LeaseTaken otherwise (also when a concurrent acquire created the row first). Every
        acquire issues a fresh token, so an earlier holder's ``commit`` fails with Stale.
        """
        until = now + timedelta(seconds=ttl_seconds)
        try:
            with write_tx(self.engine) as conn:
                return _acquire_on(conn, mailbox, crm_key, item_id, owner, until, now)[0]
        except IntegrityError:
            raise LeaseTaken(f"link ({mailbox}, {crm_key}) was created by a concurrent worker; "
                             "retry") from None

    def acquire_many(self, mailbox: str, wanted: list[tuple[str, str | None]], owner: str,
                     ttl_seconds: float, now: datetime
                     ) -> tuple[dict[str, Link], dict[str, str]]:
        """``acquire`` for a batch in one transaction: (leased links by crm_key, the reason
        for each key that could not be leased now)."""
        until = now + timedelta(seconds=ttl_seconds)
        leased: dict[str, Link] = {}
        refused: dict[str, str] = {}
        with write_tx(self.engine) as conn:
            leased.update(self._insert_new_links(conn, mailbox, wanted, owner, until, now))
            for crm_key, item_id in wanted:
                if crm_key in leased or crm_key in refused:
                    continue
                try:
                    with conn.begin_nested():
                        leased[crm_key] = _acquire_on(conn, mailbox, crm_key, item_id, owner, until, now)[0]
                except (LeaseTaken, BadRecord) as exc:
                    refused[crm_key] = str(exc)
                except IntegrityError:
                    refused[crm_key] = f"link ({mailbox}, {crm_key}) was created concurrently"
        return leased, refused

    def renew_many(self, leased: list[Link], ttl_seconds: float, now: datetime) -> dict[str, Link]:
        """Extend the leases still held under their tokens (one transaction)."""
        until = now + timedelta(seconds=ttl_seconds)
        out: dict[str, Link] = {}
        with write_tx(self.engine) as conn:
            for link in leased:
                if link.lease_token is None:
                    continue
                got = conn.execute(_RENEW, {"lid": link.id, "token": link.lease_token, "until": until}).first()
                if got is not None:
                    out[link.crm_key] = _link(got._mapping)
        return out

    def _insert_new_links(self, conn: Connection, mailbox: str, wanted: list[tuple[str, str | None]],
                          owner: str, until: datetime, now: datetime) -> dict[str, Link]:
        """Create the links none of which exists yet in one INSERT (an initial sync's batch);
        anything less simple is left to the per-key path."""
        keys = list(dict.fromkeys(key for key, item_id in wanted if item_id is None))
        if not keys:
            return {}
        existing: set[str] = set()
        for chunk in _chunks(keys):
            existing.update(conn.execute(select(links.c.crm_key).where(
                links.c.mailbox == mailbox, links.c.crm_key.in_(chunk))).scalars())
        fresh = [key for key in keys if key not in existing]
        if not fresh:
            return {}
        rows = [{"mailbox": mailbox, "crm_key": key, "item_id": None, "deleted": False, "private": False,
                 "fence": 1, "lease_owner": owner, "lease_token": uuid.uuid4().hex, "lease_until": until,
                 "created_at": now} for key in fresh]
        try:
            with conn.begin_nested():
                got = conn.execute(links.insert().returning(*links.c),   # matched by crm_key, any order
                                   rows).all()
        except IntegrityError:
            return {}      # a concurrent worker created some of them: go key by key
        return {row.crm_key: _link(row._mapping) for row in got}

    def commit(self, link: Link, update_: LinkUpdate, now: datetime) -> Link:
        """Write the new link state iff ``link.lease_token`` still holds the lease (Stale if
        not), and release the lease in the same statement."""
        try:
            with write_tx(self.engine) as conn:
                committed = _commit_on(conn, link, update_, now)
                _write_conflicts(conn, [(link, update_)], now)
                return committed
        except IntegrityError:
            raise BadRecord(f"link ({link.mailbox}, {link.crm_key}): Exchange item "
                            f"{update_.item_id} is already linked to another CRM record") from None

    def commit_many(self, commits: list[tuple[Link, LinkUpdate]], now: datetime) -> dict[str, str]:
        """``commit`` for a batch in one transaction; returns the reason for each crm_key that
        could not be committed (lease lost, item linked elsewhere); the rest are committed."""
        failed: dict[str, str] = {}
        if not commits:
            return failed
        try:
            with write_tx(self.engine) as conn:   # the write lock (SQLite) / row locks (PG) first
                held = set()
                for chunk in _chunks([link.id for link, _ in commits]):
                    held.update((row.id, row.lease_token) for row in conn.execute(
                        self._for_update(select(links.c.id, links.c.lease_token)
                                         .where(links.c.id.in_(chunk)))))
                fine = [(link, update_) for link, update_ in commits
                        if (link.id, link.lease_token) in held and link.lease_token]
                for link, _ in commits:
                    if not ((link.id, link.lease_token) in held and link.lease_token):
                        failed[link.crm_key] = (f"link ({link.mailbox}, {link.crm_key}): the lease was "
                                                "lost (expired and taken over) before commit")
                if fine:
                    conn.execute(_COMMIT_LINK_MANY, [_commit_params(link, update_, now)
                                                     for link, update_ in fine])
                    _write_conflicts(conn, fine, now)
            return failed
        except IntegrityError:
            pass   # an item linked elsewhere: find out which, one link at a time
        failed = {}
        with write_tx(self.engine) as conn:
            for link, update_ in commits:
                try:
                    with conn.begin_nested():
                        _commit_on(conn, link, update_, now)
                        _write_conflicts(conn, [(link, update_)], now)
                except Stale as exc:
                    failed[link.crm_key] = str(exc)
                except IntegrityError:
                    failed[link.crm_key] = (f"link ({link.mailbox}, {link.crm_key}): Exchange item "
                                            f"{update_.item_id} is already linked to another record")
        return failed

    def _for_update(self, stmt):
        return stmt.with_for_update() if self.engine.dialect.name == "postgresql" else stmt

    def release(self, link: Link) -> None:
        """Give the lease back (no-op if it was lost meanwhile)."""
        self.release_many([link])

    def release_many(self, leased: Iterable[Link]) -> None:
        params = [{"lid": link.id, "token": link.lease_token} for link in leased if link.lease_token]
        if params:
            with write_tx(self.engine) as conn:
                conn.execute(_RELEASE, params)

    def mark_applied_many(self, outcomes: Mapping[int, str | None]) -> None:
        if outcomes:
            at = _now()
            with write_tx(self.engine) as conn:
                conn.execute(_MARK_APPLIED, [{"eid": eid, "at": at, "outcome": outcome}
                                             for eid, outcome in outcomes.items()])

    # ----------------------------------------------------------------------------- conflicts
    def mark_retrying(self, event_ids: list[int], now: datetime,
                      due_at: datetime | None = None) -> None:
        """A retry was sent now, to run at ``due_at`` (its ETA; default now)."""
        if event_ids:
            with write_tx(self.engine) as conn:
                for chunk in _chunks(list(event_ids)):
                    conn.execute(update(events).where(events.c.id.in_(chunk), events.c.status != APPLIED,
                                                      events.c.status != DEAD)
                                 .values(published_at=now, due_at=due_at or now))

    def conflicts_for(self, mailbox: str, crm_key: str) -> list[dict[str, Any]]:
        """The conflict log of one record, oldest first (for history and tests)."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(conflicts).where(
                conflicts.c.mailbox == mailbox, conflicts.c.crm_key == crm_key).order_by(conflicts.c.id))
            return [dict(r._mapping) for r in rows]

    # ----------------------------------------------------------------------------- status
    def status_summary(self) -> list[dict[str, Any]]:
        """One dict per mailbox, sorted by mailbox, for ``crmsync status``: ``mailbox``,
        ``links`` (live, not deleted), ``pending``, ``published``, ``applied``, ``dead`` (event
        counts) and ``last_synced_at`` (aware UTC or None)."""
        with read_tx(self.engine) as conn:
            link_rows = conn.execute(
                select(links.c.mailbox,
                       func.count().filter(links.c.deleted.is_(False)),
                       func.max(links.c.synced_at))
                .group_by(links.c.mailbox)).all()
            ev_rows = conn.execute(
                select(events.c.mailbox, events.c.status, func.count())
                .group_by(events.c.mailbox, events.c.status)).all()
        acc: dict[str, dict[str, Any]] = {}

        def slot(mb: str) -> dict[str, Any]:
            return acc.setdefault(mb, {"links": 0, PENDING: 0, PUBLISHED: 0, APPLIED: 0, DEAD: 0,
                                       "last": None})

        for mb, n, last in link_rows:
            s = slot(mb)
            s["links"], s["last"] = int(n or 0), last
        for mb, status, n in ev_rows:
            s = slot(mb)
            if status in s:
                s[status] = int(n)
        return [{"mailbox": mb, "links": s["links"], "pending": s[PENDING],
                 "published": s[PUBLISHED], "applied": s[APPLIED], "dead": s[DEAD],
                 "last_synced_at": _as_utc(s["last"])}
                for mb, s in sorted(acc.items())]


def _as_utc(ts: Any) -> datetime | None:
    """MAX() over a TypeDecorator column comes back untyped on SQLite; make it aware UTC."""
    if ts is None:
        return None
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _acquire_on(conn: Connection, mailbox: str, crm_key: str, item_id: str | None, owner: str,
                until: datetime, now: datetime) -> tuple[Link, bool]:
    """The leased link, and whether its row was created now."""
    token = uuid.uuid4().hex
    where_link = f"link ({mailbox}, {crm_key})"
    row = conn.execute(_LINK_BY_KEY, {"mb": mailbox, "key": crm_key}).first()
    if row is None:
        if item_id is not None:
            other = conn.execute(_LINK_BY_ITEM, {"mb": mailbox, "item": item_id}).first()
            if other is not None:
                raise BadRecord(f"{where_link}: Exchange item {item_id} is already linked to "
                                f"{other.crm_key} in this mailbox")
        got = conn.execute(_NEW_LINK, {
            "mailbox": mailbox, "crm_key": crm_key, "item_id": item_id, "deleted": False, "private": False,
            "fence": 1, "lease_owner": owner, "lease_token": token, "lease_until": until,
            "created_at": now}).first()
        return _link(got._mapping), True
    else:
        got = conn.execute(_TAKE_LEASE, {"lid": row.id, "now": now, "owner": owner,
                                         "token": token, "until": until}).first()
        if got is None:
            raise LeaseTaken(f"{where_link} is leased by {row.lease_owner} until "
                             f"{row.lease_until.isoformat() if row.lease_until else '?'}")
    return _link(got._mapping), False


def _write_conflicts(conn: Connection, committed: list[tuple[Link, LinkUpdate]], now: datetime) -> None:
    """The conflicts a commit resolved (and what it wrote), in its transaction; a link turning
    private takes its conflict history (field values) with it."""
    for link, update_ in committed:
        if update_.private:
            conn.execute(delete(conflicts).where(conflicts.c.mailbox == link.mailbox,
                                                 conflicts.c.crm_key == link.crm_key))
    rows = [{"mailbox": link.mailbox, "crm_key": link.crm_key, "field": c.field, "crm_value": c.crm_value,
             "exchange_value": c.exchange_value, "chosen": c.chosen, "at": now}
            for link, update_ in committed for c in update_.conflicts]
    if rows:
        conn.execute(conflicts.insert(), rows)
    write_changes(conn, committed, now)   # the event log's field diffs, in the same transaction


def _commit_params(link: Link, update_: LinkUpdate, now: datetime) -> dict[str, Any]:
    return {"lid": link.id, "token": link.lease_token, "v_item_id": update_.item_id,
            "v_change_key": update_.change_key, "v_crm_version": update_.crm_version,
            "v_base_json": None if update_.base is None else update_.base.model_dump_json(),
            "v_crm_hash": update_.crm_hash, "v_exchange_hash": update_.exchange_hash,
            "v_deleted": update_.deleted, "v_private": update_.private, "v_synced_at": now}


def _commit_on(conn: Connection, link: Link, update_: LinkUpdate, now: datetime) -> Link:
    if link.lease_token is None:
        raise Stale(f"link ({link.mailbox}, {link.crm_key}): commit without a lease")
    got = conn.execute(_COMMIT_LINK, _commit_params(link, update_, now)).first()
    if got is None:
        raise Stale(f"link ({link.mailbox}, {link.crm_key}): the lease was lost "
                    "(expired and taken over) before commit")
    return _link(got._mapping)
