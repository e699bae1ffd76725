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


def test_metrics_show_what_waits_for_a_person_per_mailbox():
    """Held deletes, open conflicts and review items per mailbox, read at scrape time; a mailbox
    with nothing waiting shows 0 (so an alert can compare), and a failing read leaves the rest."""
    from prometheus_client.core import CollectorRegistry

    from crmsync.metrics import StateCollector

    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: [], lambda: [], waiting=lambda: {
        "a@x": {"held_deletes": 3, "open_conflicts": 2, "review_items": 1},
        "b@x": {"held_deletes": 0, "open_conflicts": 0, "review_items": 0}}))
    assert registry.get_sample_value("crmsync_held_deletes", {"mailbox": "a@x"}) == 3
    assert registry.get_sample_value("crmsync_open_conflicts", {"mailbox": "a@x"}) == 2
    assert registry.get_sample_value("crmsync_review_items", {"mailbox": "a@x"}) == 1
    assert registry.get_sample_value("crmsync_held_deletes", {"mailbox": "b@x"}) == 0

    def broken():
        raise RuntimeError("state database down")
    registry = CollectorRegistry()
    registry.register(StateCollector(lambda: [], lambda: [("q", 4)], waiting=broken))
    assert registry.get_sample_value("crmsync_queue_depth", {"queue": "q"}) == 4
    assert registry.get_sample_value("crmsync_held_deletes", {"mailbox": "a@x"}) is None


def test_a_task_message_reads_well_in_flower_and_carries_nothing_private():
    """The apply task's kwargsrepr: mailbox, event ids and CRM keys; capped in length; a contact's
    name, e-mail or Exchange item id never appears."""
    from producers.publisher import REPR_MAX, task_repr

    def row(i, crm_key, mailbox="a@x"):
        return SimpleNamespace(source="crm", mailbox=mailbox, crm_key=crm_key, item_id=f"AAMkSecretItem{i}",
                               name="Jane Private", email="jane@private.example")

    rows = {12: row(12, "account:ACC-1"), 13: row(13, "contact:7"), 14: row(14, None)}   # 14: a private contact
    assert task_repr([12, 13, 14], rows) == "mailbox=a@x events=[12, 13, 14] records=[account:ACC-1, contact:7]"
    assert task_repr([99], {}) == "events=[99]"                                      # row not found
    two = {1: row(1, "account:A", "a@x"), 2: row(2, "account:B", "b@x")}
    assert task_repr([1, 2], two) == "mailboxes=[a@x, b@x] events=[1, 2] records=[account:A, account:B]"

    many = {i: row(i, f"account:ACC-{i:05d}") for i in range(1000, 1100)}
    text = task_repr(list(many), many)
    assert len(text) <= REPR_MAX
    assert text.startswith("mailbox=a@x events=[1000, 1001, ")
    assert "more]" in text and "records=[account:ACC-01000, " in text
    for secret in ("AAMkSecretItem", "Jane", "private.example"):
        assert secret not in text
