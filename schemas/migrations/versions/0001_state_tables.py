"""State tables: links, events, cursors, conflicts.

Revision ID: 0001_state_tables
Revises:
Create Date: 2026-11-27

Written out by hand (not imported from schemas.state_tables) so that this revision keeps
creating exactly these tables however the models evolve later.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_state_tables"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text(), nullable=False),
        sa.Column("item_id", sa.Text()),
        sa.Column("change_key", sa.Text()),
        sa.Column("crm_version", sa.Text()),
        sa.Column("base_json", sa.Text()),
        sa.Column("crm_hash", sa.Text()),
        sa.Column("exchange_hash", sa.Text()),
        sa.Column("lease_owner", sa.Text()),
        sa.Column("lease_token", sa.Text()),
        sa.Column("lease_until", _Ts),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("synced_at", _Ts),
        sa.Column("created_at", _Ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_links"),
        sa.UniqueConstraint("mailbox", "crm_key", name="uq_links_mailbox_crm_key"),
        sa.UniqueConstraint("mailbox", "item_id", name="uq_links_mailbox_item_id"),
    )
    op.create_table(
        "events",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text()),
        sa.Column("item_id", sa.Text()),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", _Ts, nullable=False),
        sa.Column("published_at", _Ts),
        sa.Column("applied_at", _Ts),
        sa.Column("outcome", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("dedup_key", name="uq_events_dedup_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_status_created_at", "events", ["status", "created_at"])
    op.create_table(
        "cursors",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("updated_at", _Ts),
        sa.PrimaryKeyConstraint("name", name="pk_cursors"),
    )
    op.create_table(
        "conflicts",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text(), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("crm_value", sa.Text()),
        sa.Column("exchange_value", sa.Text()),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("at", _Ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conflicts"),
    )
    op.create_index("ix_conflicts_mailbox_crm_key", "conflicts", ["mailbox", "crm_key"])


def downgrade() -> None:
    op.drop_index("ix_conflicts_mailbox_crm_key", table_name="conflicts")
    op.drop_table("conflicts")
    op.drop_table("cursors")
    op.drop_index("ix_events_status_created_at", table_name="events")
    op.drop_table("events")
    op.drop_table("links")
