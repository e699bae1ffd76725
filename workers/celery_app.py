"""The Celery application of the workers.

``create_app(settings)`` is what the CLI and the tests use. The module-level ``app`` exists
for ``celery -A workers.celery_app:app ...`` (Flower, inspect): it reads its configuration from
CRMSYNC_CONFIG lazily, when Celery first needs it, never at import.
"""

from __future__ import annotations

import structlog
from celery import Celery
from celery.signals import worker_process_init

from crmsync.celery_settings import celery_settings
from crmsync.config import Settings, load_settings
from workers.tasks import register_tasks

log = structlog.get_logger("crmsync.worker")


def create_app(settings: Settings) -> Celery:
    celery_app = Celery("crmsync", set_as_current=False)
    celery_app.conf.update(celery_settings(settings.broker.dsn(), settings.worker.queue_prefix,
                                    master_name=settings.broker.sentinel_master,
                                    sentinel_password=settings.broker.sentinel_password()))
    celery_app.crmsync_settings = settings
    register_tasks(celery_app, settings.sync)

    @worker_process_init.connect(weak=False)
    def _connect_early(**_: object) -> None:
        warm_up(settings)

    return celery_app


def warm_up(settings: Settings) -> None:
    """Open the databases and every enabled mailbox's folder as the pool process starts, so
    that a wrong setting shows in the log at once and the first events wait for nothing (a
    disabled mailbox is not touched: opening its folder may create it). A failure is logged,
    not raised: the tasks connect again (and retry) when they need it."""
    from crmsync.bootstrap import container_for

    container = container_for(settings)
    for mailbox in settings.enabled_mailboxes():
        try:
            container.exchange_side(mailbox.address)
        except Exception as exc:  # noqa: BLE001 - logged; the task path retries
            log.warning("worker.mailbox_unreachable", mailbox=mailbox.address,
                        error=f"{type(exc).__name__}: {exc}")


app = Celery("crmsync")


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **_: object) -> None:
    settings = load_settings()
    sender.conf.update(celery_settings(settings.broker.dsn(), settings.worker.queue_prefix,
                                    master_name=settings.broker.sentinel_master,
                                    sentinel_password=settings.broker.sentinel_password()))
    sender.crmsync_settings = settings


register_tasks(app)
