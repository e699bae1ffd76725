"""Injected faults as exchangelib sees them, and the admin API."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from exchangelib import Contact
from exchangelib.errors import ErrorServerBusy, ErrorTimeoutExpired, RateLimitError
from exchangelib.protocol import FaultTolerance

from .conftest import admin_call, make_account


def created(acc) -> list[str]:
    return sorted(c.display_name for c in acc.contacts.all())


def test_server_busy_is_retried_after_the_back_off_by_fault_tolerance(emulator):
    acc = make_account(emulator, retry_policy=FaultTolerance(max_wait=30))
    acc.contacts.all().count()
    admin_call(emulator, "POST", "stats/reset")
    admin_call(emulator, "POST", "faults", {"operation": "CreateItem", "kind": "server_busy", "count": 2,
                                            "back_off_ms": 300})
    started = time.monotonic()
    Contact(folder=acc.contacts, display_name="Patient").save()
    assert time.monotonic() - started >= 0.6          # two back-offs of 0.3 s honoured
    assert admin_call(emulator, "GET", "stats")["requests"]["CreateItem"] == 3
    assert created(acc) == ["Patient"]


def test_server_busy_carries_back_off_to_a_fail_fast_client(emulator):
    acc = make_account(emulator)
    acc.contacts.all().count()
    admin_call(emulator, "POST", "faults", {"operation": "*", "kind": "server_busy", "count": 1,
                                            "back_off_ms": 1500})
    with pytest.raises(ErrorServerBusy) as info:
        Contact(folder=acc.contacts, display_name="Hasty").save()
    assert info.value.back_off == 1.5
    assert created(acc) == []


def test_back_off_longer_than_max_wait_gives_up(emulator):
    acc = make_account(emulator, retry_policy=FaultTolerance(max_wait=1))
    acc.contacts.all().count()
    admin_call(emulator, "POST", "faults", {"operation": "CreateItem", "kind": "server_busy", "count": 5,
                                            "back_off_ms": 60000})
    with pytest.raises(RateLimitError):
        Contact(folder=acc.contacts, display_name="Never").save()
    admin_call(emulator, "DELETE", "faults")
    Contact(folder=acc.contacts, display_name="Later").save()
    assert created(acc) == ["Later"]


@pytest.mark.parametrize("kind", ["http_500", "http_503"])
def test_transient_http_failures_are_retried_by_fault_tolerance(emulator, kind):
    acc = make_account(emulator, retry_policy=FaultTolerance(max_wait=30))
    acc.contacts.all().count()
    admin_call(emulator, "POST", "stats/reset")
    admin_call(emulator, "POST", "faults", {"operation": "CreateItem", "kind": kind, "count": 1,
                                            "back_off_ms": 100})
    Contact(folder=acc.contacts, display_name=kind).save()
    assert created(acc) == [kind]
    assert admin_call(emulator, "GET", "stats")["requests"]["CreateItem"] == 2


@pytest.mark.parametrize(("kind", "error", "text"), [
    ("http_500", ErrorServerBusy, "Server Error in 'EWS' Application"),
    ("http_503", ErrorServerBusy, "HTTP 503"),
    ("drop", ErrorTimeoutExpired, "Remote end closed connection"),
])
def test_transient_http_failures_surface_to_a_fail_fast_client(emulator, kind, error, text):
    acc = make_account(emulator)
    acc.contacts.all().count()
    admin_call(emulator, "POST", "faults", {"operation": "CreateItem", "kind": kind, "count": 1})
    with pytest.raises(error, match=text):
        Contact(folder=acc.contacts, display_name=kind).save()
    assert created(acc) == []


def test_dropped_connection_surfaces_as_timeout_and_the_next_call_works(emulator):
    # exchangelib only retries a dropped connection when it can shrink a session pool of >1
    # sessions; a sequential client has one, so it re-raises ErrorTimeoutExpired, as with Exchange.
    acc = make_account(emulator, retry_policy=FaultTolerance(max_wait=30))
    acc.contacts.all().count()
    admin_call(emulator, "POST", "faults", {"operation": "CreateItem", "kind": "drop", "count": 1})
    with pytest.raises(ErrorTimeoutExpired):
        Contact(folder=acc.contacts, display_name="lost").save()
    Contact(folder=acc.contacts, display_name="kept").save()
    assert created(acc) == ["kept"]


def test_delay_slows_the_matching_operation_only(emulator):
    acc = make_account(emulator)
    acc.contacts.all().count()
    admin_call(emulator, "POST", "faults", {"operation": "FindItem", "kind": "delay", "count": 1,
                                            "delay_ms": 700})
    started = time.monotonic()
    Contact(folder=acc.contacts, display_name="Quick").save()
    assert time.monotonic() - started < 0.7
    started = time.monotonic()
    assert created(acc) == ["Quick"]
    assert time.monotonic() - started >= 0.7


def test_stats_count_requests_per_operation_and_reset(emulator):
    acc = make_account(emulator)
    acc.contacts.all().count()
    admin_call(emulator, "POST", "stats/reset")
    acc.bulk_create(folder=acc.contacts, items=[Contact(folder=acc.contacts, display_name=f"S{i}")
                                                 for i in range(3)])
    acc.contacts.all().count()
    stats = admin_call(emulator, "GET", "stats")["requests"]
    assert stats["CreateItem"] == 1
    assert stats["FindItem"] >= 1
    admin_call(emulator, "POST", "stats/reset")
    assert admin_call(emulator, "GET", "stats") == {"requests": {}, "graph_batch_parts": 0, "graph_over_concurrency": 0}


def test_bad_fault_kind_is_refused(emulator):
    with pytest.raises(urllib.error.HTTPError) as info:
        admin_call(emulator, "POST", "faults", {"operation": "*", "kind": "explode"})
    assert info.value.code == 400


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_admin_api_refuses_non_loopback_clients(start_emulator):
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    emu = start_emulator(host="0.0.0.0")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{ip}:{emu.port}/_emulator/stats", timeout=10)
    assert info.value.code == 403
