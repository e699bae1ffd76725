"""A SIGTERM stops the producer within seconds, also while its Exchange doorbell is in the
middle of a subscription's long wait (30 s, longer than ``docker stop`` waits before SIGKILL).
The real producer process, the EWS emulator, a private redis-server, SQLite databases."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support.pipeline import Pipeline, wait_until


@pytest.mark.parametrize("notifications", ["streaming", "pull"])
def test_sigterm_stops_the_producer_while_its_doorbell_waits(tmp_path, redis_server, notifications):
    p = Pipeline(tmp_path, "sqlite", notifications=notifications,
                 broker_url=redis_server.url(redis_server.new_database()))
    try:
        proc = p.start_producer(beat=False)
        wait_until(lambda: '"producer.started"' in p.log("producer"), 60, what="the producer to start")
        if notifications == "streaming":
            wait_until(lambda: '"exchange.subscribed"' in p.log("producer"), 60, what="the stream")
        else:
            wait_until(lambda: p.emulator.stats().get("GetEvents", 0) >= 2, 60,
                       what="the pull subscription's wait")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the producer was still running 10 s after SIGTERM:\n{p.log('producer')[-2000:]}")
        assert time.monotonic() - started < 5
        assert proc.returncode == 0
        assert '"producer.stopped"' in p.log("producer")
    finally:
        p.close()
