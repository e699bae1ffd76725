"""Fenced leases and private links.

Revision ID: 0002_fenced_leases
Revises: 0001_state_tables
Create Date: 2026-12-01

``links.fence`` grows by one on every lease acquisition (a take-over included), so a worker that
lost its lease can be told apart from the one holding it; ``links.private`` marks a pair whose
Exchange contact turned Private: unlinked, its data gone from the state database.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_fenced_leases"
down_revision: str | Sequence[str] | None = "0001_state_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.add_column(sa.Column("fence", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("links") as batch:
        batch.drop_column("private")
        batch.drop_column("fence")
