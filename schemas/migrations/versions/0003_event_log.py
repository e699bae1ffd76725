"""The event log: the last error taken apart, and what each applied event wrote.

Revision ID: 0003_event_log
Revises: 0002_fenced_leases
Create Date: 2026-12-01

``events`` gains the last error's class, record, field and time, and indexes for looking
events up by record; ``event_changes`` keeps, per event and link commit, the fields written
with side, old and new value as JSON (for ``crmsync events show`` and ``crmsync history``).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_event_log"
down_revision: str | Sequence[str] | None = "0002_fenced_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("events", sa.Column("error_class", sa.Text()))
    op.add_column("events", sa.Column("error_record", sa.Text()))
    op.add_column("events", sa.Column("error_field", sa.Text()))
    op.add_column("events", sa.Column("failed_at", _Ts))
    op.create_index("ix_events_crm_key", "events", ["crm_key"])
    op.create_index("ix_events_item_id", "events", ["item_id"])
    op.create_table(
        "event_changes",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", _Id),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text(), nullable=False),
        sa.Column("item_id", sa.Text()),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("writes", sa.Text(), nullable=False),
        sa.Column("at", _Ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event_changes"),
    )
    op.create_index("ix_event_changes_event_id", "event_changes", ["event_id"])
    op.create_index("ix_event_changes_mailbox_crm_key", "event_changes", ["mailbox", "crm_key"])


def downgrade() -> None:
    op.drop_table("event_changes")
    op.drop_index("ix_events_item_id", table_name="events")
    op.drop_index("ix_events_crm_key", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("failed_at")
        batch.drop_column("error_field")
        batch.drop_column("error_record")
        batch.drop_column("error_class")
