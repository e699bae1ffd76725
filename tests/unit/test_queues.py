"""Queues per purpose: events go to the queue of the side they are applied to, workers consume
chosen queues (all by default), doctor wants a consumer on every queue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from crmsync.cli.processes import worker_argv
from crmsync.config import Settings, WorkerSettings
from crmsync.service.doctor import check_workers
from producers.publisher import TASK_BATCH, CeleryPublisher
from schemas.events import queue_for_source, queue_name, queue_names

ALL = "crmsync.to_exchange,crmsync.to_crm,crmsync.maintenance"


def test_queue_names_by_purpose_and_target_side():
    assert queue_names() == ("crmsync.to_exchange", "crmsync.to_crm", "crmsync.maintenance")
    assert queue_for_source("crm") == "crmsync.to_exchange"
    assert queue_for_source("exchange", "acme") == "acme.to_crm"
    with pytest.raises(ValueError, match="unknown queue 'events'"):
        queue_name("events")


def test_publisher_keeps_the_order_and_splits_where_the_side_changes():
    pub = CeleryPublisher("redis://127.0.0.1:1/0", "p")      # never connects here
    rows = {i: SimpleNamespace(source="exchange" if i in (3, 4) else "crm") for i in range(1, 7)}
    assert list(pub._chunks([1, 2, 3, 4, 5, 99], rows)) == [
        ("p.to_exchange", [1, 2]), ("p.to_crm", [3, 4]), ("p.to_exchange", [5, 99])]   # 99: no row
    many = list(range(1, 2 * TASK_BATCH + 2))
    chunks = list(pub._chunks(many, {}))
    assert [len(c) for _, c in chunks] == [TASK_BATCH, TASK_BATCH, 1]
    assert [i for _, c in chunks for i in c] == many


def _argv(extra=(), **worker) -> list[str]:
    return worker_argv(Settings(worker=WorkerSettings(**worker)), list(extra))


def test_worker_consumes_every_queue_unless_told():
    argv = _argv()
    assert argv[argv.index("-Q") + 1] == ALL
    assert _argv(["-Q", "to_crm,maintenance"])[-2:] == ["-Q", "crmsync.to_crm,crmsync.maintenance"]
    assert _argv(["--queues=to_exchange"], queue_prefix="acme")[-1] == "--queues=acme.to_exchange"
    assert _argv(["-Qother.q"])[-1] == "-Qother.q"          # a full name stays as written
    assert _argv(queues="to_crm")[4] == "crmsync.to_crm"    # [worker] queues


class _Probes:
    def __init__(self, workers):
        self._workers = workers

    def workers(self):
        return {"workers": self._workers}


def test_doctor_fails_while_a_queue_has_no_worker():
    [check] = check_workers(_Probes({"w1@h": ["crmsync.to_exchange", "crmsync.to_crm"]}), queue_names())
    assert check.status == "FAIL"
    assert "none consumes 'crmsync.maintenance'" in check.detail
    assert "crmsync worker -Q crmsync.maintenance" in check.fix
    [ok] = check_workers(_Probes({"w1@h": ["crmsync.to_exchange", "crmsync.to_crm"],
                                  "w2@h": ["crmsync.maintenance"]}), queue_names())
    assert ok.status == "OK"


def test_metrics_show_depth_per_queue():
    from prometheus_client.core import CollectorRegistry

    from crmsync.metrics import StateCollector

    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: [], lambda: [("crmsync.to_crm", 3), ("crmsync.to_exchange", 0)]))
    assert registry.get_sample_value("crmsync_queue_depth", {"queue": "crmsync.to_crm"}) == 3
    assert registry.get_sample_value("crmsync_queue_depth", {"queue": "crmsync.to_exchange"}) == 0
