"""The state database: links, the event log, cursors and the conflict log (DESIGN.md §1, §3).

Created and evolved only by the Alembic migrations in ``schemas/migrations``; this module is
their ``target_metadata`` and what the state store queries.

Privacy: events carry ids only (crm_key, item_id), never contact data, so a private Exchange
contact leaves no trace of its content here; the field diffs in ``event_changes`` are written
only for shared contacts and leave with the link's conflicts when a contact turns private.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator

state_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every dialect.

    SQLite keeps no offset, so values are stored as naive UTC and tagged UTC on the way out.
    A naive datetime is refused: a local time stored as UTC would silently shift leases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(
                f"state database timestamps must be timezone-aware datetimes, got {value!r}; "
                "use datetime.now(UTC)"
            )
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Id = BigInteger().with_variant(Integer, "sqlite")

links = Table(
    "links",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("crm_key", Text, nullable=False),
    Column("item_id", Text),
    Column("change_key", Text),
    Column("crm_version", Text),
    Column("base_json", Text),
    Column("crm_hash", Text),
    Column("exchange_hash", Text),
    Column("lease_owner", Text),
    Column("lease_token", Text),
    Column("lease_until", UtcDateTime),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    Column("fence", BigInteger, nullable=False, server_default="0"),     # +1 on every lease acquisition
    Column("private", Boolean, nullable=False, server_default=false()),  # the contact turned Private
    Column("synced_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("mailbox", "crm_key"),
    UniqueConstraint("mailbox", "item_id"),
)

events = Table(
    "events",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),      # crm | exchange
    Column("mailbox", Text, nullable=False),
    Column("op", Text, nullable=False),          # upsert | delete
    Column("crm_key", Text),
    Column("item_id", Text),
    Column("dedup_key", Text, nullable=False, unique=True),
    Column("status", Text, nullable=False, server_default="pending"),  # pending|published|applied|dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime),
    Column("applied_at", UtcDateTime),
    Column("outcome", Text),                     # what the worker did: updated, noop, ...
    # the last error, taken apart for the event log (last_error keeps "Class: message")
    Column("error_class", Text),
    Column("error_record", Text),                # the CRM key or ItemId the error is about
    Column("error_field", Text),                 # the canonical field(s), when known
    Column("failed_at", UtcDateTime),            # when the last error happened
    # When the event's current delivery starts: its publish, or its retry's ETA while in
    # back-off. The re-drive sends it again once it is overdue (or its message was lost).
    Column("due_at", UtcDateTime),
    Index("ix_events_status_created_at", "status", "created_at"),
    Index("ix_events_status_due_at", "status", "due_at"),
    Index("ix_events_crm_key", "crm_key"),
    Index("ix_events_item_id", "item_id"),
    sqlite_autoincrement=True,
)

event_changes = Table(
    # What crmsync wrote for an event, committed with the link (the event log's diffs and
    # ``crmsync history``): one row per event and commit, its field writes as JSON (one row,
    # not one per field, keeps the commit of an initial sync's batch cheap). Never a private
    # contact's data: a link turning private takes its rows with it, as it does its conflicts.
    "event_changes",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("event_id", _Id),                     # the event the write was done for
    Column("mailbox", Text, nullable=False),
    Column("crm_key", Text, nullable=False),
    Column("item_id", Text),
    Column("action", Text, nullable=False),      # the outcome: updated, created-exchange, ...
    # [[side, field, old, new], ...]: side crm | exchange (None: unknown); field None for a
    # whole-record act (a delete, a deactivation)
    Column("writes", Text, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_event_changes_event_id", "event_id"),
    Index("ix_event_changes_mailbox_crm_key", "mailbox", "crm_key"),
)

cursors = Table(
    "cursors",
    state_metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text),
    Column("updated_at", UtcDateTime),
)

conflicts = Table(
    "conflicts",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("crm_key", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("crm_value", Text),
    Column("exchange_value", Text),
    Column("chosen", Text, nullable=False),      # crm | exchange | held
    Column("at", UtcDateTime, nullable=False),
    Index("ix_conflicts_mailbox_crm_key", "mailbox", "crm_key"),
)

held_deletes = Table(
    "held_deletes",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("crm_key", Text, nullable=False),
    Column("side", Text, nullable=False),        # where the delete would land: crm | exchange
    # passed (crossed under the brake) | held | approved | applied | discarded | unlinked | resolved
    Column("status", Text, nullable=False),
    Column("noted_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime),
    Column("reason", Text),                      # why held: brake | folder-empty | folder-missing
    Index("ix_held_deletes_mailbox_status", "mailbox", "status"),
    Index("ix_held_deletes_mailbox_crm_key", "mailbox", "crm_key"),
)

held_conflicts = Table(
    "held_conflicts",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("crm_key", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("crm_value", Text),
    Column("exchange_value", Text),
    Column("base_value", Text),
    Column("status", Text, nullable=False),      # held | resolved (decided, to carry out) | applied
    Column("value", Text),                       # the decided value
    Column("decided_by", Text),                  # who: "cli:<user>" (--take crm|exchange|--value)
    Column("held_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime),
    Index("ix_held_conflicts_mailbox_crm_key", "mailbox", "crm_key"),
    Index("ix_held_conflicts_status", "status"),
)

#: New records waiting for a person (issue 8): ambiguous matches, or every match under
#: ``on_new_record = "review"``. One row per (mailbox, side, record_key).
review_items = Table(
    "review_items",
    state_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("side", Text, nullable=False),              # crm | exchange: where the new record is
    Column("record_key", Text, nullable=False),        # its CRM key or ItemId
    Column("name", Text, nullable=False),              # its display name
    Column("candidates_json", Text, nullable=False),   # [{key, name, score, agree, disagree}]
    Column("reason", Text, nullable=False),
    Column("status", Text, nullable=False),            # open | accepted | rejected
    Column("chosen", Text),                            # the candidate a person linked (accepted)
    Column("decided_by", Text),
    Column("held_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime),
    UniqueConstraint("mailbox", "side", "record_key", name="uq_review_items_record"),
    Index("ix_review_items_status", "status"),
)
