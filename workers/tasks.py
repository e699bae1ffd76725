"""Thin Celery tasks: deserialize, call the service, map errors to retry or dead letter.

The broker keeps no attempt count, so attempts are counted in the event row; after
``sync.max_attempts`` the event is a dead letter with its last error, to be replayed with
``crmsync replay``. A batch task hands each event it could not finish to the single-event
task, which owns the retry schedule.
"""

from __future__ import annotations

import random

import structlog
from celery import Celery, Task

from crmsync.bootstrap import container_for
from crmsync.celery_settings import MAX_RETRY_COUNTDOWN_S
from crmsync.errors import BadRecord, LeaseTaken, Transient
from crmsync.service import apply as service
from schemas.events import APPLY_EVENT_TASK, APPLY_EVENTS_TASK

log = structlog.get_logger("crmsync.worker")


def retry_countdown(attempts: int, retry_after: float | None, rng: random.Random = random) -> float:
    """Exponential back-off with full jitter; a server's own back-off (ErrorServerBusy) wins
    when it asks for longer."""
    backoff = min(MAX_RETRY_COUNTDOWN_S, 2.0 ** min(attempts, 12))
    countdown = rng.uniform(backoff / 2, backoff)
    if retry_after is not None:
        countdown = max(countdown, retry_after)
    return min(countdown, MAX_RETRY_COUNTDOWN_S)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def next_step(store, event_id: int, exc: BaseException, max_attempts: int) -> float | None:
    """What to do after ``exc``: a countdown to retry after, or None when the event is now a
    dead letter. Waiting for another worker's lease is not an attempt."""
    if isinstance(exc, LeaseTaken):
        return random.uniform(0.2, 1.5)
    attempts = store.record_attempt(event_id, describe(exc))
    if isinstance(exc, BadRecord) or attempts >= max_attempts:
        store.mark_dead(event_id, describe(exc))
        log.error("event.dead", event_id=event_id, attempts=attempts, error=describe(exc))
        return None
    retry_after = exc.retry_after if isinstance(exc, Transient) else None
    countdown = retry_countdown(attempts, retry_after)
    log.warning("event.retry", event_id=event_id, attempts=attempts, countdown=round(countdown, 2),
                error=describe(exc))
    return countdown


def register_tasks(app: Celery) -> None:
    @app.task(name=APPLY_EVENT_TASK, bind=True, shared=False, acks_late=True,
              reject_on_worker_lost=True, max_retries=None)
    def apply_event(self: Task, event_id: int) -> str:
        container = container_for(self.app.crmsync_settings)
        try:
            return service.apply_event(container.sync_services, int(event_id))
        except Exception as exc:  # noqa: BLE001 - every failure is retried, then dead
            countdown = next_step(container.store, event_id, exc,
                                  self.app.crmsync_settings.sync.max_attempts)
            if countdown is None:
                return "dead"
            raise self.retry(countdown=countdown) from None

    @app.task(name=APPLY_EVENTS_TASK, bind=True, shared=False, acks_late=True,
              reject_on_worker_lost=True, max_retries=None)
    def apply_events(self: Task, event_ids: list[int]) -> dict[str, int]:
        container = container_for(self.app.crmsync_settings)
        result = service.apply_events(container.sync_services, [int(i) for i in event_ids])
        dead = 0
        for event_id, exc in result.errors.items():
            countdown = next_step(container.store, event_id, exc,
                                  self.app.crmsync_settings.sync.max_attempts)
            if countdown is None:
                dead += 1
            else:
                apply_event.apply_async(kwargs={"event_id": event_id}, countdown=countdown)
        return {"applied": len(result.outcomes), "retrying": len(result.errors) - dead, "dead": dead}
