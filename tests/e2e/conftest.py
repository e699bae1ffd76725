"""One running pipeline per backend for the e2e module: emulator, Redis, producer, worker.

Redis is a fresh database of the session's private redis-server (tests/conftest.py).
"""

from __future__ import annotations

import pytest

from tests.support.pipeline import Pipeline


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-{request.param}"), request.param,
                 broker_url=redis_server.url(redis_server.new_database()))
    p.start_worker()
    p.start_producer()
    try:
        p.outlook()          # the producer has opened the mailbox and created the folder
        p.settle()
        yield p
    finally:
        p.close()
