"""Why a delete is held: the delete brake, or the empty-folder guard (issue 9).

Revision ID: 0007_policy2
Revises: 0006_policy
Create Date: 2026-12-02

``held_deletes.reason`` is ``brake`` (too many deletes in the window), ``folder-empty`` or
``folder-missing`` (the sync folder read empty or had disappeared: always held). Rows noted
before this revision have none, which reads as the brake.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_policy2"
down_revision: str | Sequence[str] | None = "0006_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("held_deletes") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("held_deletes") as batch:
        batch.drop_column("reason")
