"""The message broker as an operator sees it: does it answer, how deep is the queue."""

from __future__ import annotations

from crmsync.config import Settings


def queue_depths(settings: Settings) -> tuple[dict[str, int], str]:
    """Messages waiting in each queue (to_exchange, to_crm, maintenance): ({name: count}, "")
    or ({}, why they are unknown)."""
    from schemas.events import queue_names

    url = settings.broker.dsn()
    if not url.startswith(("redis://", "rediss://")):
        return {}, "only known for a Redis broker"
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        return {name: int(client.llen(name)) for name in queue_names(settings.worker.queue_prefix)}, ""
    except redis.RedisError as exc:
        return {}, f"broker unreachable: {type(exc).__name__}"


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis broker at ``url`` answers PING."""
    if not url.startswith(("redis://", "rediss://")):
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                         socket_timeout=timeout_s).ping())
    except redis.RedisError:
        return False
