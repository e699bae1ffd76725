"""Fixtures shared by every suite.

Nothing in the tests uses the machine's own Redis server. Tests that need a broker get a
private redis-server (a free port, a temporary directory, ``--save "" --appendonly no``, bound to
127.0.0.1), started here and shut down by its own pid:

- ``redis_server``: one for the whole session, started when a test first needs it. Each test or
  pipeline takes a fresh database number of it (``redis_server.new_database()``), so nothing is
  ever flushed and no two tests share a database.
- ``private_redis``: one for a single test, which may stop and start it (outage tests).

Without a ``redis-server`` binary on PATH these fixtures fail the tests that need them (never
skip), saying how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_proc import RedisServer, RedisServerMissing, start_redis


def _start_redis_or_fail(workdir: Path) -> RedisServer:
    try:
        return start_redis(workdir)
    except RedisServerMissing as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _start_redis_or_fail(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _start_redis_or_fail(tmp_path_factory.mktemp("private-redis"))
    try:
        yield server
    finally:
        server.stop()
