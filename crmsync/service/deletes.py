"""Held deletes: list them, approve or discard them (the delete brake's other half).

The brake (``crmsync.core.deletes``, applied in ``crmsync.service.apply``) holds deletes; an
administrator decides. A decision is written on the held rows and then carried out by the normal
apply path, through a new event per link: the worker re-reads both sides, so a contact restored
meanwhile is simply merged, never deleted. Approving lets the delete cross; discarding keeps the
pair unlinked-by-delete (nothing is restored on the deleting side, nothing crosses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from crmsync.errors import CrmsyncError
from crmsync.ports import HeldDelete, HeldDeletes, NewEvent, StateStore


@dataclass
class DeleteReview:
    """What ``crmsync deletes`` does, against the ports."""

    held: HeldDeletes
    store: StateStore
    clock: Callable[[], datetime]

    def pending(self, mailbox: str | None = None) -> list[HeldDelete]:
        return self.held.find(mailbox, ("held",))

    def decide(self, decision: Literal["approve", "discard"], ids: list[int] | None,
               mailbox: str | None = None) -> tuple[list[HeldDelete], list[int]]:
        """Mark held deletes (``ids``; None: all held, of ``mailbox`` when given) approved or
        discarded; returns the rows decided and the event ids that carry the decision out.
        Unknown or already decided ids are an error naming them (nothing is decided then)."""
        held = self.pending(mailbox)
        by_id = {row.id: row for row in held}
        if ids is not None:
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                raise CrmsyncError(f"held delete(s) {', '.join(map(str, unknown))}: not held"
                                   + (f" in {mailbox}" if mailbox else "") + " (see `crmsync deletes list`)")
            held = [by_id[i] for i in ids]
        status = "approved" if decision == "approve" else "discarded"
        moved = set(self.held.set_status([row.id for row in held], status, self.clock(), only_from=("held",)))
        rows = [row for row in held if row.id in moved]
        events = self.store.add_events([NewEvent("crm", row.mailbox, "upsert", f"{status}:{row.id}", crm_key=row.crm_key)
                                        for row in rows])
        return rows, events
