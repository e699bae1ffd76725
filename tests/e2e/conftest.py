"""One running pipeline per backend for the e2e module: emulator, Redis, producer, worker."""

from __future__ import annotations

import pytest

from tests.support.pipeline import Pipeline


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-{request.param}"), request.param)
    p.start_worker()
    p.start_producer()
    try:
        p.outlook()          # the producer has opened the mailbox and created the folder
        p.settle()
        yield p
    finally:
        p.close()
