"""The Graph mailbox limit counted in Redis (a private redis-server): holders in separate
processes never exceed it together, a Retry-After one of them records holds the others back,
and a crashed holder's slots come back when its lease expires."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from crmsync.adapters.exchange.graph.limiter import RedisSlots
from crmsync.errors import Transient

MAILBOX = "Alice@Example.com"


def _hammer(url: str, rounds: int, weight: int, counter_key: str, peak_key: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    slots = RedisSlots(url, app="t:app", limit=4, wait_s=30)
    for _ in range(rounds):
        with slots.hold(MAILBOX.lower(), weight):
            now = r.incrby(counter_key, weight)
            r.eval("if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
                   "redis.call('SET', KEYS[1], ARGV[1]) end", 1, peak_key, now)
            time.sleep(0.002)   # the request's own duration while it holds its slots (not a wait
            #                     for a condition): it makes the four processes' holds overlap
            r.decrby(counter_key, weight)


def test_processes_together_never_hold_more_than_the_limit(redis_server):
    url = redis_server.url(redis_server.new_database())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(url, 40, w, "inflight", "peak")) for w in (1, 1, 2, 4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    import redis

    peak = int(redis.Redis.from_url(url).get("peak"))
    assert 2 <= peak <= 4                 # they did overlap, and never beyond 4


def test_a_retry_after_pauses_every_holder_and_a_long_one_is_handed_to_celery(redis_server):
    url = redis_server.url(redis_server.new_database())
    one, other = RedisSlots(url, app="t:app", wait_s=2), RedisSlots(url, app="t:app", wait_s=2)
    one.pause(MAILBOX, 0.5)
    started = time.monotonic()
    with other.hold(MAILBOX.upper()):
        waited = time.monotonic() - started
    assert 0.35 <= waited < 2
    one.pause(MAILBOX, 10)
    with pytest.raises(Transient) as caught, other.hold(MAILBOX):
        pass
    assert caught.value.retry_after is not None and 5 < caught.value.retry_after <= 10
    assert "Retry-After" in str(caught.value)


def test_slots_of_a_crashed_holder_expire_with_their_lease_and_a_full_mailbox_is_transient(redis_server):
    url = redis_server.url(redis_server.new_database())
    crashed = RedisSlots(url, app="t:app", lease_s=1.0)
    held = crashed.hold(MAILBOX, 4)
    held.__enter__()                       # never released: the process "died"
    assert crashed.in_use(MAILBOX) == 4
    impatient = RedisSlots(url, app="t:app", wait_s=0.3)
    with pytest.raises(Transient, match="all 4 Graph request slots stayed busy"), impatient.hold(MAILBOX):
        pass
    patient = RedisSlots(url, app="t:app", wait_s=5)
    with patient.hold(MAILBOX, 2):
        assert patient.in_use(MAILBOX) == 2
    assert patient.in_use(MAILBOX) == 0
    other_app = RedisSlots(url, app="t:other", wait_s=0.3)
    with other_app.hold(MAILBOX, 4):       # the limit is per app
        pass
