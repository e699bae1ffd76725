"""The manual conflict queue: list held fields, show one, resolve it (``conflict_policy = "manual"``).

A held field keeps both sides' values (the rest of the record syncs). A person decides (take the
CRM's value, Exchange's, or a new one); the decision is written on the held row with who made it,
and carried out by the normal apply path through a new event: the worker writes the value to
whichever side does not hold it yet, and the conflict log records the resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from crmsync.errors import CrmsyncError
from crmsync.ports import HeldConflict, HeldConflicts, NewEvent, StateStore


@dataclass
class ConflictQueue:
    """What ``crmsync conflicts`` does, against the ports."""

    conflicts: HeldConflicts
    store: StateStore
    clock: Callable[[], datetime]

    def pending(self, mailbox: str | None = None) -> list[HeldConflict]:
        return self.conflicts.find(mailbox, ("held",))

    def show(self, conflict_id: int) -> HeldConflict:
        row = self.conflicts.get(conflict_id)
        if row is None:
            raise CrmsyncError(f"conflict {conflict_id}: no such conflict (see `crmsync conflicts list`)")
        return row

    def resolve(self, conflict_id: int, take: Literal["crm", "exchange"] | None, value: str | None,
                decided_by: str) -> tuple[HeldConflict, list[int]]:
        """Decide a held field: ``take`` one side's value, or give ``value``; returns the row and
        the event that carries the decision out."""
        if (take is None) == (value is None):
            raise CrmsyncError("give exactly one of --take crm|exchange or --value TEXT")
        row = self.show(conflict_id)
        if row.status != "held":
            raise CrmsyncError(f"conflict {conflict_id}: already {row.status} (by {row.decided_by})")
        chosen = row.crm_value if take == "crm" else row.exchange_value if take == "exchange" else value
        by = f"{decided_by} (--take {take})" if take else f"{decided_by} (--value)"
        if not self.conflicts.resolve(conflict_id, chosen, by, self.clock()):
            raise CrmsyncError(f"conflict {conflict_id}: decided meanwhile by someone else")
        events = self.store.add_events([NewEvent("crm", row.mailbox, "upsert", f"resolved:{row.id}",
                                                 crm_key=row.crm_key)])
        return self.show(conflict_id), events
