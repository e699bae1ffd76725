"""The Celery application of the workers.

``create_app(settings)`` is what the CLI and the tests use. The module-level ``app`` exists
for ``celery -A workers.celery_app:app ...`` (Flower, inspect): it reads its configuration from
CRMSYNC_CONFIG lazily, when Celery first needs it, never at import.
"""

from __future__ import annotations

from celery import Celery

from crmsync.celery_settings import celery_settings
from crmsync.config import Settings, load_settings
from workers.tasks import register_tasks


def create_app(settings: Settings) -> Celery:
    celery_app = Celery("crmsync", set_as_current=False)
    celery_app.conf.update(celery_settings(settings.broker.dsn(), settings.worker.queue))
    celery_app.crmsync_settings = settings
    register_tasks(celery_app)
    return celery_app


app = Celery("crmsync")


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **_: object) -> None:
    settings = load_settings()
    sender.conf.update(celery_settings(settings.broker.dsn(), settings.worker.queue))
    sender.crmsync_settings = settings


register_tasks(app)
