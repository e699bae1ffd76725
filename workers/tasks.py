"""Thin Celery tasks: deserialize, call the service, and let Celery retry.

Retries are Celery's own (``autoretry_for``, ``retry_backoff``, ``retry_jitter``,
``max_retries``); the task base class's hooks keep the event rows honest: a scheduled retry
refreshes the events' published time (so the re-drive leaves them alone), and a task that
fails for good writes its unfinished events as dead letters. The broker keeps no attempt count,
so attempts are counted in the event rows: a bad record is a dead letter at once, waiting for
another worker's lease is not an attempt, and after ``sync.max_attempts`` an event is dead.

A mailbox crmsync cannot reach (``MailboxUnavailable``: access denied, HTTP 401, no
impersonation or delegate right, folder missing) is no fault of its events: they are retried
with Celery's back-off (up to ``sync.retry_backoff_max_s``) without counting an attempt, the
mailbox is recorded as unavailable for ``crmsync status``, and they are never dead letters for
it. When Celery's retry budget runs out during a long outage, the events are left unfinished
(not dead) and the producer's re-drive sends them again after ``sync.redrive_after_s``, which
starts a new series of retries; so they keep being tried until the mailbox answers.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import structlog
from celery import Celery, Task

from crmsync import metrics
from crmsync.adapters.state.event_log import error_parts, record_errors
from crmsync.bootstrap import container_for
from crmsync.config import SyncSettings
from crmsync.errors import BadRecord, LeaseTaken, MailboxUnavailable, Transient
from crmsync.service import apply as service
from schemas.events import APPLY_EVENTS_TASK

log = structlog.get_logger("crmsync.worker")


class RetryLater(Transient):
    """Some events of the batch are to be tried again (their errors are in the event rows)."""

    def __init__(self, event_ids: list[int], errors: list[BaseException]) -> None:
        waits = [e.retry_after for e in errors if isinstance(e, Transient) and e.retry_after]
        super().__init__(f"{len(event_ids)} event(s) to retry; first: {describe(errors[0])}",
                         retry_after=max(waits) if waits else None)
        self.event_ids = event_ids
        #: the ids whose mailbox is unavailable: never dead letters (see the module's doc)
        self.parked = [i for i, e in zip(event_ids, errors, strict=True) if isinstance(e, MailboxUnavailable)]


def describe(exc: BaseException) -> str:
    """One readable line: a database error's driver message, never its SQL and parameters."""
    parts = error_parts(exc)
    return f"{parts['error_class']}: {parts['message']}"


def settle(store, result: service.BatchResult, max_attempts: int,
           rows: dict | None = None) -> list[int]:
    """Write what the batch could not do into the event rows; returns the ids to retry.
    ``rows`` (id -> event row) label the metrics."""
    rows = rows or {}
    retry: list[int] = []
    for event_id, exc in result.errors.items():
        if isinstance(exc, LeaseTaken):      # another execution holds the link: not an attempt
            retry.append(event_id)
            continue
        if isinstance(exc, MailboxUnavailable):   # the mailbox's fault, not the event's: not an attempt
            retry.append(event_id)
            continue
        attempts = store.record_attempt(event_id, describe(exc))
        row = rows.get(event_id)
        if isinstance(exc, BadRecord) or attempts >= max_attempts:
            store.mark_dead(event_id, describe(exc))
            log.error("event.dead", event_id=event_id, attempts=attempts, error=describe(exc))
            if row is not None:
                metrics.count_dead(row)
        else:
            log.warning("event.retry", event_id=event_id, attempts=attempts, error=describe(exc))
            retry.append(event_id)
            if row is not None:
                metrics.count_failed(row)
    return retry


def note_unavailable(container, errors: dict) -> None:
    """Record the mailboxes found unavailable (``crmsync status`` shows them); the producer
    removes the record once the mailbox answers again."""
    seen: dict[str, str] = {}
    for exc in errors.values():
        if isinstance(exc, MailboxUnavailable):
            seen.setdefault(exc.mailbox, str(exc))
    for mailbox, error in seen.items():
        log.warning("mailbox.unavailable", mailbox=mailbox, error=error)
        try:
            container.mailbox_health.mark_unavailable(mailbox, error)
        except Exception as err:  # noqa: BLE001 - reporting must not lose the retry
            log.warning("mailbox.health_write_failed", mailbox=mailbox, error=describe(err))


def count_applied(rows: dict, outcomes: dict) -> None:
    """The applied/lag metrics (the service logs one line per applied event)."""
    done = {i: o for i, o in outcomes.items() if o not in ("missing", "done-already")}
    metrics.count_applied(rows, done, datetime.now(UTC))


def retry_eta(retry: BaseException | None, now: datetime) -> datetime:
    """When a scheduled retry runs: Celery's ``Retry.when`` is a countdown (s) or an ETA."""
    when = getattr(retry, "when", None)
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, (int, float)) and when > 0:
        return now + timedelta(seconds=float(when))
    return now


def retry_countdown(asked: float | None, countdown: float | None, longest: float) -> float | None:
    """The back-off, or the server's asked wait when longer, never past ``longest``: the re-drive
    age is validated above sync.retry_backoff_max_s, so no retry may wait longer than that."""
    if asked and (countdown is None or countdown < asked):
        countdown = asked
    return None if countdown is None else min(countdown, longest)


class ApplyTask(Task):
    """The hooks that keep event rows in step with Celery's retries."""

    def retry(self, *args, exc=None, countdown=None, **kwargs):  # noqa: ANN001, ANN002, ANN003 - Celery's
        """Celery's retry, waiting at least as long as the server asked (ErrorServerBusy's
        BackOffMilliseconds, HTTP Retry-After) when that is longer than the back-off, capped at
        sync.retry_backoff_max_s."""
        countdown = retry_countdown(getattr(exc, "retry_after", None), countdown,
                                    self.app.crmsync_settings.sync.retry_backoff_max_s)
        return super().retry(*args, exc=exc, countdown=countdown, **kwargs)

    def _store(self):
        return container_for(self.app.crmsync_settings).store

    def on_retry(self, exc, task_id, args, kwargs, einfo):  # noqa: ANN001 - Celery's signature
        """The retry's ETA is the events' due time: the re-drive leaves them alone until then."""
        ids = getattr(exc, "event_ids", None) or list(kwargs.get("event_ids", ()))
        now = datetime.now(UTC)
        self._store().mark_retrying(ids, now, retry_eta(getattr(einfo, "exception", None), now))

    def on_failure(self, exc, task_id, args, kwargs, einfo):  # noqa: ANN001 - Celery's signature
        """Retries exhausted, or an error nothing can retry: the unfinished events are dead
        letters, with their last error (or this one)."""
        store = self._store()
        ids = getattr(exc, "event_ids", None) or list(kwargs.get("event_ids", ()))
        parked = set(getattr(exc, "parked", ()))
        if isinstance(exc, MailboxUnavailable):
            parked.update(ids)
        for event_id, event in store.get_events([int(i) for i in ids]).items():
            if event_id in parked and event.status not in ("applied", "dead"):
                # a long outage of its mailbox: left for the producer's re-drive, never dead
                log.warning("event.parked", event_id=event_id, mailbox=event.mailbox,
                            error=describe(exc), action="re-driven after sync.redrive_after_s")
                continue
            if event.status not in ("applied", "dead"):
                store.mark_dead(event_id, event.last_error or describe(exc))
                metrics.count_dead(event)
                log.error("event.dead", event_id=event_id, attempts=event.attempts,
                          error=event.last_error or describe(exc))


def register_tasks(app: Celery, sync: SyncSettings | None = None) -> None:
    """Register the apply task; ``sync`` gives the retry limits (defaults for the lazy app
    that Flower and ``celery inspect`` load)."""
    sync = sync or SyncSettings()

    @app.task(name=APPLY_EVENTS_TASK, bind=True, base=ApplyTask, shared=False, acks_late=True,
              reject_on_worker_lost=True, autoretry_for=(RetryLater,), retry_backoff=True,
              retry_backoff_max=int(sync.retry_backoff_max_s), retry_jitter=True,
              # a backstop: the event rows' attempts decide dead letters (settle), at max_attempts
              max_retries=4 * sync.max_attempts)
    def apply_events(self: Task, event_ids: list[int]) -> dict[str, int]:
        container = container_for(self.app.crmsync_settings)
        owner = f"{self.request.id or 'local'}:{uuid.uuid4().hex[:12]}"   # one execution, never shared
        result = service.apply_events(container.sync_services, [int(i) for i in event_ids], owner)
        sync = self.app.crmsync_settings.sync
        rows = container.store.get_events([int(i) for i in event_ids])
        count_applied(rows, result.outcomes)
        record_errors(container.state_engine,   # the event log: class, record, field, when
                      {i: e for i, e in result.errors.items() if not isinstance(e, LeaseTaken)})
        retry = settle(container.store, result, sync.max_attempts, rows)
        note_unavailable(container, result.errors)
        if not retry:
            return {"applied": len(result.outcomes), "dead": len(result.errors)}
        errors = [result.errors[i] for i in retry]
        if all(isinstance(e, LeaseTaken) for e in errors):
            # Another execution holds the links (or a dead worker's lease has yet to expire):
            # waiting is not an attempt, so it does not spend the retry budget either.
            wait = min(2.0 ** min(self.request.retries, 6), sync.lease_ttl_s / 4)
            raise self.retry(exc=RetryLater(retry, errors), countdown=random.uniform(wait / 2, wait),
                             max_retries=self.request.retries + 1 + (self.max_retries or 0))
        raise RetryLater(retry, errors)
