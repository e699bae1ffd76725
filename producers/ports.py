"""The small shapes the producers need from their neighbours.

Real adapters (``crmsync.adapters.crm.changelog.Changelog``, ``SqlCrm``, ``SqlStateStore``,
``ExchangeFeed``) satisfy them structurally; the unit tests plug in in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from crmsync.ports import Event, NewEvent


class ChangeRowLike(Protocol):
    """One ``crm_changelog`` row: which CRM record changed, and how."""

    @property
    def id(self) -> int: ...

    @property
    def table_name(self) -> str: ...          # "accounts" | "contacts"

    @property
    def op(self) -> str: ...                  # "insert" | "update" | "delete"

    @property
    def crm_key(self) -> str: ...             # account:<account_no> | contact:<id>


class ChangelogPort(Protocol):
    def pending(self, limit: int) -> Sequence[ChangeRowLike]:
        """Changelog rows not yet turned into events, oldest first."""

    def pending_ids(self, limit: int) -> Sequence[int]:
        """The ids of the unprocessed rows committed and visible now, ascending, read in one
        snapshot (a row committed later is not among them, whatever its id)."""

    def mark_processed(self, ids: Sequence[int]) -> None: ...


class CrmKeysPort(Protocol):
    def all_keys(self, inactive: bool = False) -> list[str]: ...

    def contact_keys_of_account(self, account_no: str) -> list[str]: ...


class ExchangeChangeLike(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def change_key(self) -> str | None: ...

    @property
    def op(self) -> str: ...                  # "upsert" | "delete"


class FeedPort(Protocol):
    def changes(self, sync_state: str | None,
                max_changes: int = 500) -> tuple[Sequence[ExchangeChangeLike], str, bool]:
        """Changes since ``sync_state``: (changes, new sync state, more to come)."""


class EventStore(Protocol):
    """The part of ``crmsync.ports.StateStore`` the producers use."""

    def add_events(self, events: list[NewEvent],
                   cursor: tuple[str, str] | None = None) -> list[int]: ...

    def mark_published(self, event_ids: list[int]) -> None: ...

    def events_to_redrive(self, older_than: datetime, limit: int, *,
                          lost_before: datetime | None = None,
                          now: datetime | None = None) -> list[Event]: ...

    def get_cursor(self, name: str) -> str | None: ...

    def synced_change_keys(self, mailbox: str, item_ids: list[str]) -> dict[str, str]:
        """item_id -> ChangeKey of the version its link was last synced at."""


class Publisher(Protocol):
    def publish(self, store: EventStore, event_ids: Sequence[int]) -> int:
        """Send the event ids in order, in task messages of up to ``TASK_BATCH`` ids each, and mark
        the sent ones published; never
        raises for a broker outage (the unsent stay pending for the re-drive). Returns how many
        were sent: the first ``n`` ids."""


class Doorbell(Protocol):
    """Wakes the loop early when something probably changed; never the source of truth."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if rung (and the ring is consumed)."""

    def armed(self) -> bool:
        """True while every source it covers would ring on a change."""

    def take_sources(self) -> set[str] | None:
        """The sources rung since the last call; None: read everything."""


class MailboxHealth(Protocol):
    """Which mailboxes are unavailable (crmsync.adapters.state.health.SqlMailboxHealth)."""

    def unavailable(self) -> dict[str, dict]: ...

    def mark_unavailable(self, mailbox: str, error: str) -> None: ...

    def mark_available(self, mailbox: str) -> None: ...
