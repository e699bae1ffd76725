"""The message contract between producers and workers: a task name and its one argument.

A message carries only the id of an event row in the state database (the record); everything
else is re-read by the worker, so a lost, repeated or late message is harmless.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

APPLY_EVENTS_TASK = "crmsync.apply_events"

#: Queues are named per purpose, ``<prefix>.<purpose>`` (``[worker] queue_prefix``): events go
#: by the side they are applied to, the scheduled maintenance tasks (beat) to their own queue.
QUEUE_PREFIX = "crmsync"
TO_EXCHANGE = "to_exchange"     # CRM changes, applied to Exchange
TO_CRM = "to_crm"               # Exchange changes, applied to the CRM
MAINTENANCE = "maintenance"     # re-drive and drift check (crmsync beat)
PURPOSES = (TO_EXCHANGE, TO_CRM, MAINTENANCE)


def queue_name(purpose: str, prefix: str = QUEUE_PREFIX) -> str:
    """``crmsync.to_exchange`` etc.; a full name (with a dot) is returned as it is."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown queue {purpose!r}: one of {', '.join(PURPOSES)}")
    return f"{prefix}.{purpose}"


def queue_names(prefix: str = QUEUE_PREFIX) -> tuple[str, ...]:
    """Every queue, in PURPOSES order."""
    return tuple(queue_name(p, prefix) for p in PURPOSES)


def queue_for_source(source: str, prefix: str = QUEUE_PREFIX) -> str:
    """The queue of an event by its target side: a CRM change is applied to Exchange."""
    return queue_name(TO_CRM if source == "exchange" else TO_EXCHANGE, prefix)


class EventBatchMessage(BaseModel):
    """The Celery task payload (kwargs) for APPLY_EVENTS_TASK: events applied as one batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_ids: list[int]
