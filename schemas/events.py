"""The message contract between producers and workers: a task name and its one argument.

A message carries only the id of an event row in the state database (the record); everything
else is re-read by the worker, so a lost, repeated or late message is harmless.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

APPLY_EVENTS_TASK = "crmsync.apply_events"
EVENTS_QUEUE = "crmsync.events"


class EventBatchMessage(BaseModel):
    """The Celery task payload (kwargs) for APPLY_EVENTS_TASK: events applied as one batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_ids: list[int]
