"""When each event's delivery is due.

Revision ID: 0005_event_due
Revises: 0003_event_log
Create Date: 2026-12-02

``events.due_at`` is when the event's current delivery starts: its publish, or its retry's ETA
while in back-off. The re-drive looks every few seconds for events overdue past it, without
racing a retry that is still waiting, and re-sends at once what a restarted Redis lost. Rows
from before have none; the re-drive then falls back on their publish (or creation) time.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_event_due"
down_revision: str | Sequence[str] | None = "0003_event_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_events_status_due_at", "events", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_events_status_due_at", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("due_at")
