"""Celery settings shared by the workers and the producers' publisher (DESIGN.md §4).

At-least-once delivery: late acks, re-queue on a lost worker, one message prefetched at a time,
and a visibility timeout longer than the longest task plus its longest retry countdown.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from schemas.events import APPLY_EVENTS_TASK, QUEUE_PREFIX, TO_EXCHANGE, queue_name, queue_names

#: Well above the longest retry countdown (sync.retry_backoff_max_s) plus a task's run.
VISIBILITY_TIMEOUT_S = 3600


#: Scheduled maintenance tasks (crmsync beat), on the maintenance queue.
REDRIVE_TASK = "crmsync.redrive"
DRIFT_CHECK_TASK = "crmsync.drift_check"


def _transport_options(broker_url: str, master_name: str | None, sentinel_password: str | None) -> dict[str, Any]:
    """Redis: unacked messages come back after the visibility timeout; Sentinel (kombu's
    sentinel:// transport) also needs the master's name and, if the sentinels require one, their
    password. Other transports take no such option (kombu's SQLAlchemy transport hands its
    options to create_engine)."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if broker_url.startswith("sentinel://"):
        options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT_S, "master_name": master_name}
        if sentinel_password:
            options["sentinel_kwargs"] = {"password": sentinel_password}
        return options
    return {}


def celery_settings(broker_url: str, queue_prefix: str = QUEUE_PREFIX, *, master_name: str | None = None,
                    sentinel_password: str | None = None) -> dict[str, Any]:
    """Events are published to the queue of their target side (producers.publisher); an apply
    task sent without a queue goes to ``to_exchange``, the maintenance tasks to theirs.
    ``master_name`` (and ``sentinel_password``) for a sentinel:// broker (``[broker] sentinel_master``)."""
    queue = queue_name(TO_EXCHANGE, queue_prefix)
    maintenance = queue_name("maintenance", queue_prefix)
    return {
        "broker_url": broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(broker_url, master_name, sentinel_password),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": queue,
        # Every queue declared (each exactly as Celery would make it for ``-Q``: a direct
        # exchange of its own name), so Flower's queue-length API and Broker page list all of
        # them, not only the default one, while no worker tells it which queues are consumed.
        "task_queues": tuple(Queue(name, Exchange(name, type="direct"), routing_key=name)
                             for name in queue_names(queue_prefix)),
        "task_routes": {APPLY_EVENTS_TASK: {"queue": queue},
                        REDRIVE_TASK: {"queue": maintenance},
                        DRIFT_CHECK_TASK: {"queue": maintenance}},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,   # Flower shows tasks live
        "task_send_sent_event": True,
        "broker_pool_limit": 4,
    }
