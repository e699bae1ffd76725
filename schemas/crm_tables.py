"""The reference CRM schema (what ``crmsync init`` creates in an empty CRM database).

The names are a public contract: other programs write to these tables with plain SQL, and the
triggers of ``schemas.crm_triggers`` capture every such write into ``crm_changelog``.
Timestamps in the CRM are naive UTC (``TIMESTAMP`` without time zone), the common CRM habit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    false,
    true,
)
from sqlalchemy.types import TypeDecorator, UserDefinedType

crm_metadata = MetaData()


class _SqliteRawTimestamp(UserDefinedType[Any]):
    """``TIMESTAMP`` on SQLite without SQLAlchemy's strict string parser (see CrmTimestamp)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TIMESTAMP"


class CrmTimestamp(TypeDecorator[datetime]):
    """A naive-UTC ``TIMESTAMP`` that tolerates what other programs write into SQLite.

    Plain-SQL writers store ``datetime('now')``, ISO strings with ``T`` or ``Z``, or milliseconds;
    SQLAlchemy's SQLite DATETIME parser rejects or misreads some of these, so on SQLite the raw
    text is parsed with ``datetime.fromisoformat`` (aware values are converted to naive UTC, and
    unparseable text reads as None rather than breaking the read of the whole row).
    """

    impl = TIMESTAMP
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SqliteRawTimestamp())
        return dialect.type_descriptor(TIMESTAMP())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            if dialect.name == "sqlite":
                return value.isoformat(" ", "microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value if isinstance(value, datetime) else None


accounts = Table(
    "accounts",
    crm_metadata,
    Column("id", Integer, primary_key=True),
    Column("account_no", Text, nullable=False, unique=True),
    Column("company_name", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("job_title", Text),
    Column("department", Text),
    Column("email", Text),
    Column("email2", Text),
    Column("phone_business", Text),
    Column("phone_mobile", Text),
    Column("phone_home", Text),
    Column("fax", Text),
    Column("street", Text),
    Column("city", Text),
    Column("state", Text),
    Column("postal_code", Text),
    Column("country", Text),
    Column("website", Text),
    Column("notes", Text),
    Column("is_active", Boolean, nullable=False, server_default=true()),
    Column("updated_at", CrmTimestamp),
)

contacts = Table(
    "contacts",
    crm_metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("job_title", Text),
    Column("email", Text),
    Column("phone_business", Text),
    Column("phone_mobile", Text),
    Column("notes", Text),
    Column("updated_at", CrmTimestamp),
    Index("ix_contacts_account_id", "account_id"),
)

#: Append-only log written by triggers. On SQLite the id is AUTOINCREMENT so that ids are never
#: reused after a purge: event dedup keys are built from them.
crm_changelog = Table(
    "crm_changelog",
    crm_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("table_name", Text, nullable=False),
    Column("row_id", Integer, nullable=False),
    Column("row_key", Text, nullable=False),  # account_no for accounts, str(id) for contacts
    Column("account_id", Integer),            # for contacts: their account's id
    Column("op", Text, nullable=False),       # insert | update | delete
    Column("changed_at", CrmTimestamp, nullable=False),
    Column("processed", Boolean, nullable=False, server_default=false()),
    Index("ix_crm_changelog_processed_id", "processed", "id"),
    sqlite_autoincrement=True,
)

#: Columns each CRM table must have (checked by ``crmsync.adapters.database.check_crm_schema``).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    t.name: tuple(c.name for c in t.columns) for t in (accounts, contacts, crm_changelog)
}
