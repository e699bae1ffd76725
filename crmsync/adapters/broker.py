"""The message broker as an operator sees it: does it answer, how deep is the queue."""

from __future__ import annotations

from typing import Any

from crmsync.adapters.redis_client import is_redis_url, redis_client
from crmsync.config import BrokerSettings, Settings


def broker_client(broker: BrokerSettings, timeout_s: float = 2.0, connect_timeout_s: float | None = None) -> Any:
    """A redis-py client on the broker of ``[broker]``: from its redis:// URL, or the master the
    sentinels name for a sentinel:// one (passwords read now from their variables)."""
    return redis_client(broker.dsn(), master=broker.sentinel_master, sentinel_password=broker.sentinel_password(),
                        timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)


def queue_depths(settings: Settings) -> tuple[dict[str, int], str]:
    """Messages waiting in each queue (to_exchange, to_crm, maintenance): ({name: count}, "")
    or ({}, why they are unknown)."""
    from schemas.events import queue_names

    if not is_redis_url(settings.broker.url):
        return {}, "only known for a Redis broker"
    import redis

    try:
        client = broker_client(settings.broker, timeout_s=2, connect_timeout_s=1)
        return {name: int(client.llen(name)) for name in queue_names(settings.worker.queue_prefix)}, ""
    except redis.RedisError as exc:
        return {}, f"broker unreachable: {type(exc).__name__}"


def redis_answers(url: str, timeout_s: float = 1.0, master: str | None = None) -> bool:
    """True when a Redis broker at ``url`` answers PING (sentinel://: the master ``master``)."""
    if not is_redis_url(url) or (url.startswith("sentinel://") and not master):
        return False
    import redis

    try:
        return bool(redis_client(url, master=master, timeout_s=timeout_s).ping())
    except redis.RedisError:
        return False
