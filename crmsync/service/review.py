"""The review queue of new records (issue 8, a second source of accounts): list, accept, reject.

A record new on one side (a contact added in Outlook, an account imported into the CRM by another
system) waits here when its match on the other side is ambiguous, or always under ``on_new_record =
"review"``; nothing is created for it meanwhile. A person decides, and the decision is carried out
by the normal apply path through a new event (fenced and idempotent like every other change):

* ``accept`` (with the candidate, by default the best one): the worker links the two and merges
  them (a three-way merge with an empty base), never a create;
* ``reject``: the worker creates the record on the other side, as before issue 8.

Plain functions over the ports, for the CLI now and a web console later.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from crmsync.errors import CrmsyncError
from crmsync.ports import NewEvent, ReviewItem, ReviewQueue, StateStore


class ReviewError(CrmsyncError):
    """A review decision that cannot be made (which item, why)."""


def _settled(store: StateStore, row: ReviewItem) -> bool:
    """The waiting record was linked meanwhile (its candidate's own event, `link add`)."""
    if row.side == "exchange":
        return store.find_link(row.mailbox, item_id=row.record_key) is not None
    link = store.find_link(row.mailbox, crm_key=row.record_key)
    return link is not None and (link.item_id is not None or link.base is not None)


def list_items(queue: ReviewQueue, mailbox: str | None = None, store: StateStore | None = None) -> list[ReviewItem]:
    """The records waiting for a person, oldest first (one mailbox, or every one); with the
    state store, those linked meanwhile by another way are left out."""
    rows = queue.find(mailbox, ("open",))
    return [r for r in rows if not _settled(store, r)] if store is not None else rows


def counts(queue: ReviewQueue, store: StateStore | None = None) -> dict[str, int]:
    """Waiting records per mailbox (for `crmsync status`)."""
    if store is None:
        return queue.counts()
    out: dict[str, int] = {}
    for row in list_items(queue, None, store):
        out[row.mailbox] = out.get(row.mailbox, 0) + 1
    return out


def _open(queue: ReviewQueue, item_id: int) -> ReviewItem:
    row = queue.get(item_id)
    if row is None:
        raise ReviewError(f"review item {item_id}: no such item (see `crmsync review list`)")
    if row.status != "open":
        raise ReviewError(f"review item {item_id}: already {row.status}"
                          + (f" by {row.decided_by}" if row.decided_by else ""))
    return row


def _event(row: ReviewItem, status: str) -> NewEvent:
    dedup = f"review:{row.id}:{status}"
    if row.side == "crm":
        return NewEvent("crm", row.mailbox, "upsert", dedup, crm_key=row.record_key)
    return NewEvent("exchange", row.mailbox, "upsert", dedup, item_id=row.record_key)


def _is_linked(store: StateStore, row: ReviewItem, candidate: str) -> str | None:
    """Why ``candidate`` cannot be linked any more (it is linked to another record), or None."""
    if row.side == "crm":
        link = store.find_link(row.mailbox, item_id=candidate)
        return f"contact {candidate} is linked to {link.crm_key}" if link is not None else None
    link = store.find_link(row.mailbox, crm_key=candidate)
    if link is not None and (link.item_id is not None or link.base is not None):
        return f"{candidate} is linked to contact {link.item_id or '(created)'}"
    return None


def accept(queue: ReviewQueue, store: StateStore, item_id: int, candidate: str | None, decided_by: str,
           clock: Callable[[], datetime]) -> tuple[ReviewItem, list[int]]:
    """Link the waiting record to ``candidate`` (a key from its candidates; default the best);
    the next sync merges the two. Returns the row and the event that carries it out."""
    row = _open(queue, item_id)
    if _settled(store, row):
        raise ReviewError(f"review item {item_id}: {row.record_key} was linked meanwhile; nothing to decide")
    keys = [str(c["key"]) for c in row.candidates]
    if candidate is None:
        if not keys:
            raise ReviewError(f"review item {item_id}: it has no candidate; reject it to create it")
        candidate = keys[0]
    elif candidate not in keys:
        raise ReviewError(f"review item {item_id}: {candidate!r} is not one of its candidates "
                          f"({', '.join(keys) or 'none'})")
    why = _is_linked(store, row, candidate)
    if why is not None:
        raise ReviewError(f"review item {item_id}: cannot link to {candidate}: {why}; choose another "
                          "candidate or reject it")
    if not queue.decide(item_id, "accepted", candidate, decided_by, clock()):
        raise ReviewError(f"review item {item_id}: decided meanwhile by someone else")
    # The candidate may wait as a new record itself, with this one as its candidate (both arrived
    # at once): the same decision settles it.
    for other in queue.find(row.mailbox, ("open",)):
        if (other.side != row.side and other.record_key == candidate
                and row.record_key in {str(c["key"]) for c in other.candidates}):
            queue.decide(other.id, "accepted", row.record_key, decided_by, clock())
    events = store.add_events([_event(row, "accepted")])
    decided = queue.get(item_id)
    assert decided is not None
    return decided, events


def reject(queue: ReviewQueue, store: StateStore, item_id: int, decided_by: str,
           clock: Callable[[], datetime]) -> tuple[ReviewItem, list[int]]:
    """None of the candidates is this record: the next sync creates it on the other side."""
    row = _open(queue, item_id)
    if _settled(store, row):
        raise ReviewError(f"review item {item_id}: {row.record_key} was linked meanwhile; nothing to decide")
    if not queue.decide(item_id, "rejected", None, decided_by, clock()):
        raise ReviewError(f"review item {item_id}: decided meanwhile by someone else")
    events = store.add_events([_event(row, "rejected")])
    decided = queue.get(item_id)
    assert decided is not None
    return decided, events


__all__ = ["ReviewError", "accept", "counts", "list_items", "reject"]
