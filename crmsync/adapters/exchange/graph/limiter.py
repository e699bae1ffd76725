"""A mailbox's Graph request slots: Exchange Online runs at most 4 concurrent requests per app per
mailbox and answers the 5th with 429. Every crmsync process (Celery worker processes, the
producer, the CLI) sends requests as the same app, so the limit must be counted across them.

* :class:`LocalSlots` counts in this process only (commands that run alone: doctor, linking).
* :class:`RedisSlots` counts in Redis, shared by every process using the same Redis (the
  broker's): per (app, mailbox), a sorted set of leases scored by their expiry, taken and given
  back atomically by Lua scripts, so a crashed process's slots come back after ``lease_s``.
  A ``$batch`` takes as many slots as Graph runs its parts in parallel (up to all of them), in
  one step, so two batches never deadlock holding half each.
* ``pause(mailbox, seconds)`` shares a 429/503's ``Retry-After``: every process holds back its
  next requests to that mailbox until it has passed (in Redis: a key with that expiry).

Waiting for a slot (or a shared pause) is bounded by ``wait_s``; past it, Transient (with the
pause's remainder as ``retry_after``) hands the retry to Celery, as a long Retry-After does.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from crmsync.errors import Transient

DEFAULT_LIMIT = 4                 # Exchange Online: concurrent requests per app per mailbox


class MailboxLimiter(Protocol):
    limit: int

    def hold(self, mailbox: str, weight: int = 1) -> contextlib.AbstractContextManager[None]: ...

    def pause(self, mailbox: str, seconds: float) -> None: ...


def _busy(mailbox: str, limit: int, wait_s: float, shared: str) -> Transient:
    return Transient(f"mailbox {mailbox}: all {limit} Graph request slots stayed busy for {wait_s:g}s "
                     f"({shared}); retrying later", retry_after=1.0)


class LocalSlots:
    """Counting semaphores per mailbox in this process; ``pause`` is a per-mailbox deadline."""

    def __init__(self, limit: int = DEFAULT_LIMIT, wait_s: float = 20.0) -> None:
        self.limit = max(1, limit)
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._used: dict[str, int] = {}
        self._paused: dict[str, float] = {}

    @contextlib.contextmanager
    def hold(self, mailbox: str, weight: int = 1) -> Iterator[None]:
        key, n = mailbox.lower(), max(1, min(weight, self.limit))
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while True:
                now = time.monotonic()
                paused = self._paused.get(key, 0.0) - now
                if paused <= 0 and self._used.get(key, 0) + n <= self.limit:
                    break
                if now >= deadline:
                    if paused > 0:
                        raise Transient(f"mailbox {mailbox}: Graph asked to wait {paused:.1f}s more (Retry-After)",
                                        retry_after=paused)
                    raise _busy(mailbox, self.limit, self.wait_s, "in this process")
                self._cond.wait(timeout=min(deadline - now, paused if paused > 0 else deadline - now))
            self._used[key] = self._used.get(key, 0) + n
        try:
            yield
        finally:
            with self._cond:
                self._used[key] -= n
                self._cond.notify_all()

    def pause(self, mailbox: str, seconds: float) -> None:
        with self._cond:
            key = mailbox.lower()
            self._paused[key] = max(self._paused.get(key, 0.0), time.monotonic() + seconds)


# KEYS[1] the leases (sorted set: member -> expiry in ms), KEYS[2] the pause key.
# ARGV: limit, weight, lease ms, lease id. Returns 1 (taken), 0 (full) or -ms (paused that long).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return -paused end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit, n, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) + n > limit then return 0 end
for i = 1, n do redis.call('ZADD', KEYS[1], now + lease, ARGV[4] .. ':' .. i) end
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""

# KEYS[1] the pause key; ARGV[1] ms. Only ever lengthens a pause.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class RedisSlots:
    """The mailbox limit counted in Redis, shared by every process of the deployment."""

    PREFIX = "crmsync:graph"

    def __init__(self, url: str, app: str, limit: int = DEFAULT_LIMIT, wait_s: float = 20.0,
                 lease_s: float = 60.0, master: str | None = None, sentinel_password: str | None = None) -> None:
        import redis

        from crmsync.adapters.redis_client import redis_client

        self.limit = max(1, limit)
        self.wait_s = wait_s
        self.lease_ms = max(1000, int(lease_s * 1000))
        self.app = app
        self._redis: Any = redis_client(url, master=master, sentinel_password=sentinel_password, timeout_s=5)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._pause = self._redis.register_script(_PAUSE)

    def _keys(self, mailbox: str) -> list[str]:
        base = f"{self.PREFIX}:{self.app}:{mailbox.lower()}"
        return [f"{base}:slots", f"{base}:pause"]

    def _redis_down(self, mailbox: str, exc: BaseException) -> Transient:
        return Transient(f"mailbox {mailbox}: cannot count the Graph request slots in Redis "
                         f"({type(exc).__name__}: {str(exc)[:120]})", retry_after=5.0)

    @contextlib.contextmanager
    def hold(self, mailbox: str, weight: int = 1) -> Iterator[None]:
        n = max(1, min(weight, self.limit))
        keys = self._keys(mailbox)
        lease = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        backoff = 0.005
        while True:
            try:
                got = int(self._acquire(keys=keys, args=[self.limit, n, self.lease_ms, lease]))
            except self._errors as exc:
                raise self._redis_down(mailbox, exc) from None
            if got == 1:
                break
            left = deadline - time.monotonic()
            if got < 0:                       # a shared Retry-After
                paused = -got / 1000.0
                if paused > left:
                    raise Transient(f"mailbox {mailbox}: Graph asked every crmsync process to wait {paused:.1f}s "
                                    "(Retry-After)", retry_after=paused)
                time.sleep(paused)
                continue
            if left <= 0:
                raise _busy(mailbox, self.limit, self.wait_s, "shared by every crmsync process through Redis")
            time.sleep(min(left, backoff * (0.5 + random.random())))
            backoff = min(backoff * 2, 0.1)
        try:
            yield
        finally:
            with contextlib.suppress(*self._errors):     # a lost release expires with the lease
                self._redis.zrem(keys[0], *(f"{lease}:{i}" for i in range(1, n + 1)))

    def pause(self, mailbox: str, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(*self._errors):
            self._pause(keys=[self._keys(mailbox)[1]], args=[int(seconds * 1000)])

    def in_use(self, mailbox: str) -> int:
        """Slots held now (expired leases excluded), for tests and ``crmsync doctor``."""
        now_s, now_us = self._redis.time()
        return int(self._redis.zcount(self._keys(mailbox)[0], now_s * 1000 + now_us // 1000 + 1, "+inf"))
