"""``crmsync beat`` and the scheduled maintenance tasks it sends to the maintenance queue.

Two tasks, each reporting what it found (a log line, and its return value in Flower):

- ``crmsync.redrive`` every ``sync.redrive_check_s``: re-publish events not applied in time, and
  everything a restarted broker lost (producers.redrive.Redriver). The only re-drive there is.
- ``crmsync.drift_check(mailbox)`` every ``sync.drift_check_s`` per mailbox: compare the links'
  hashes with both sides and raise events for drift only (crmsync.service.drift).

They are wired here, in the composition root, because the re-drive publishes through the
producers' publisher and the workers never import the producers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import typer

from crmsync.celery_settings import DRIFT_CHECK_TASK, REDRIVE_TASK
from crmsync.config import Settings

log = structlog.get_logger("crmsync.maintenance")

_publishers: dict[int, Any] = {}   # pid -> this process's publisher (a Celery client)


def _publisher(settings: Settings):
    import os

    from producers.publisher import CeleryPublisher

    pid = os.getpid()
    if pid not in _publishers:
        _publishers.clear()
        _publishers[pid] = CeleryPublisher.from_settings(settings)
    return _publishers[pid]


def redrive_now(settings: Settings) -> dict[str, Any]:
    """One re-drive round; what it found."""
    from crmsync.bootstrap import container_for
    from producers.redrive import Redriver

    store = container_for(settings).store
    report = Redriver(store, _publisher(settings), settings.sync.redrive_after_s).run_once(datetime.now(UTC))
    found = {"resent": report.sent, "broker_restarted": report.broker_restarted}
    # every few seconds: a line only when it found something
    (log.info if report.sent or report.broker_restarted else log.debug)("maintenance.redrive", **found)
    return found


def drift_check_now(settings: Settings, mailbox: str) -> dict[str, Any]:
    """One mailbox's drift check; its events are published at once."""
    from crmsync.bootstrap import container_for
    from crmsync.service.drift import check_drift

    container = container_for(settings)
    report = check_drift(container.sync_services, mailbox, datetime.now(UTC))
    sent = _publisher(settings).publish(container.store, report.event_ids) if report.event_ids else 0
    found = {**report.summary(), "published": sent}
    log.info("maintenance.drift_check", **found)
    return found


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery beat's entries; a message not taken before the next one is due expires."""
    schedule = {"redrive": {"task": REDRIVE_TASK, "schedule": timedelta(seconds=settings.sync.redrive_check_s),
                            "options": {"expires": settings.sync.redrive_check_s}}}
    for mailbox in settings.enabled_mailboxes():
        schedule[f"drift-check {mailbox.address}"] = {
            "task": DRIFT_CHECK_TASK, "schedule": timedelta(seconds=settings.sync.drift_check_s),
            "kwargs": {"mailbox": mailbox.address}, "options": {"expires": settings.sync.drift_check_s}}
    return schedule


def configure_maintenance(app, settings: Settings) -> None:  # noqa: ANN001 - a Celery app
    """Register the maintenance tasks on ``app`` and give it beat's schedule (an in-memory
    scheduler: no schedule file; after a restart every entry runs within its interval)."""

    @app.task(name=REDRIVE_TASK, shared=False, ignore_result=True)
    def redrive() -> dict[str, Any]:
        return redrive_now(settings)

    @app.task(name=DRIFT_CHECK_TASK, shared=False, ignore_result=True)
    def drift_check(mailbox: str) -> dict[str, Any]:
        return drift_check_now(settings, mailbox)

    app.conf.beat_schedule = beat_schedule(settings)
    app.conf.beat_scheduler = "celery.beat:Scheduler"


def run_beat(settings: Settings, extra: list[str]) -> None:
    """Celery beat in this process (any `celery beat` option passes through)."""
    from workers.celery_app import create_app

    app = create_app(settings)
    configure_maintenance(app, settings)
    app.start(argv=["beat", "--loglevel", settings.log.level, *extra])


def beat(ctx: typer.Context) -> None:
    """Run Celery beat: it sends the re-drive (every sync.redrive_check_s) and each mailbox's
    drift check (every sync.drift_check_s) to the maintenance queue, where a worker runs them.
    Run exactly one. Any `celery beat` option passes through."""
    from crmsync.cli.app import ready_container

    run_beat(ready_container().settings, list(ctx.args))
