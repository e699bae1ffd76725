"""Held deletes and held conflicts: the delete brake's record and the manual conflict queue (issue 9).

Revision ID: 0006_policy
Revises: 0005_event_due
Create Date: 2026-12-02

Every delete that would cross to the other side is noted per (mailbox, CRM key): ``passed`` when
it crossed under the brake, ``held`` when the brake stopped it, then ``approved``/``applied`` or
``discarded`` by an administrator; ``unlinked`` marks a delete that a policy keeps from crossing.
``held_conflicts`` keeps a field that ``conflict_policy = "manual"`` holds, with both values, until
a person decides (``resolved``, with the value and who decided) and the worker carries it out.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_policy"
down_revision: str | Sequence[str] | None = "0005_event_due"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "held_deletes",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("noted_at", ts, nullable=False),
        sa.Column("decided_at", ts),
    )
    op.create_index("ix_held_deletes_mailbox_status", "held_deletes", ["mailbox", "status"])
    op.create_index("ix_held_deletes_mailbox_crm_key", "held_deletes", ["mailbox", "crm_key"])
    op.create_table(
        "held_conflicts",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("crm_key", sa.Text(), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("crm_value", sa.Text()),
        sa.Column("exchange_value", sa.Text()),
        sa.Column("base_value", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("decided_by", sa.Text()),
        sa.Column("held_at", ts, nullable=False),
        sa.Column("decided_at", ts),
    )
    op.create_index("ix_held_conflicts_mailbox_crm_key", "held_conflicts", ["mailbox", "crm_key"])
    op.create_index("ix_held_conflicts_status", "held_conflicts", ["status"])


def downgrade() -> None:
    op.drop_index("ix_held_conflicts_status", "held_conflicts")
    op.drop_index("ix_held_conflicts_mailbox_crm_key", "held_conflicts")
    op.drop_table("held_conflicts")
    op.drop_index("ix_held_deletes_mailbox_crm_key", "held_deletes")
    op.drop_index("ix_held_deletes_mailbox_status", "held_deletes")
    op.drop_table("held_deletes")
