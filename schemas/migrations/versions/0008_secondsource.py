"""The review queue of new records (issue 8, a second source of accounts).

Revision ID: 0008_secondsource
Revises: 0007_policy2
Create Date: 2026-12-02

A record new on one side (a contact added in Outlook, an account imported into the CRM by another
system) whose match on the other side is ambiguous, or every such record when ``on_new_record =
"review"``, waits here until a person decides: ``open``, then ``accepted`` (to be linked to the
chosen candidate) or ``rejected`` (to be created), carried out by the worker. One row per
(mailbox, side, record key): replaying the event finds the same row.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_secondsource"
down_revision: str | Sequence[str] | None = "0007_policy2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "review_items",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("record_key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("candidates_json", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Text()),
        sa.Column("decided_by", sa.Text()),
        sa.Column("held_at", ts, nullable=False),
        sa.Column("decided_at", ts),
        sa.UniqueConstraint("mailbox", "side", "record_key", name="uq_review_items_record"),
    )
    op.create_index("ix_review_items_status", "review_items", ["status"])


def downgrade() -> None:
    op.drop_index("ix_review_items_status", "review_items")
    op.drop_table("review_items")
