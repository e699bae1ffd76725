"""Graph JSON batching, injected Graph faults (admin API) and the per-app per-mailbox concurrency
limit (HTTP only)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .graph_helpers import ALICE, BOB, SCOPED_APP, Graph, assert_graph_error, msal_token, wait_for


def test_batch_runs_parts_and_answers_each_by_id(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, {"givenName": "Batched"})
    parts = [
        {"id": "1", "method": "GET", "url": f"/users/{ALICE}/contacts/{c['id']}?$select=givenName"},
        {"id": "2", "method": "POST", "url": f"/users/{ALICE}/contactFolders/{folder}/contacts",
         "headers": {"Content-Type": "application/json"}, "body": {"givenName": "Created in batch"}},
        {"id": "3", "method": "PATCH", "url": f"/users/{ALICE}/contacts/{c['id']}",
         "headers": {"Content-Type": "application/json", "If-Match": 'W/"stale"'}, "body": {"surname": "x"}},
        {"id": "4", "method": "GET", "url": f"/users/{ALICE}/contacts/AAMkAGVmMDEzMTM4AAA="},
    ]
    r = g.post("/$batch", json={"requests": parts})
    assert r.status_code == 200, r.text
    res = {p["id"]: p for p in r.json()["responses"]}
    assert res["1"]["status"] == 200 and res["1"]["body"]["givenName"] == "Batched"
    assert res["2"]["status"] == 201 and res["2"]["body"]["givenName"] == "Created in batch"
    assert res["3"]["status"] == 412 and res["3"]["body"]["error"]["code"] == "ErrorIrresolvableConflict"
    assert res["4"]["status"] == 404 and res["4"]["body"]["error"]["code"] == "ErrorItemNotFound"
    names = {x["givenName"] for x in g.get(f"/users/{ALICE}/contactFolders/{folder}/contacts").json()["value"]}
    assert names == {"Batched", "Created in batch"}


def test_stats_count_a_batch_once_and_its_parts_under_their_operations(graph_env):
    emu, _, g = graph_env
    folder = g.new_folder("CRM")
    emu.reset_stats()
    parts = [{"id": str(i), "method": "POST", "url": f"/users/{ALICE}/contactFolders/{folder}/contacts",
              "headers": {"Content-Type": "application/json"}, "body": {"givenName": f"B{i}"}} for i in range(3)]
    assert g.post("/$batch", json={"requests": parts}).status_code == 200
    assert g.get(f"/users/{ALICE}/contactFolders/{folder}/contacts").status_code == 200
    answer = emu.admin("/_emulator/stats")
    assert answer["requests"] == {"graph:batch": 1, "graph:create contact": 3, "graph:list contacts": 1}
    assert answer["graph_batch_parts"] == 3          # 5 counted, 2 of them HTTP requests
    emu.reset_stats()
    assert emu.admin("/_emulator/stats") == {"requests": {}, "graph_batch_parts": 0, "graph_over_concurrency": 0}


def test_batch_depends_on_runs_in_order_and_fails_dependents(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    parts = [
        {"id": "a", "method": "POST", "url": f"/users/{ALICE}/contactFolders/{folder}/contacts",
         "body": {"givenName": "First"}, "headers": {"Content-Type": "application/json"}},
        {"id": "b", "dependsOn": ["a"], "method": "GET", "url": f"/users/{ALICE}/contacts/AAMkAGVmMDEzMTM4AAA="},
        {"id": "c", "dependsOn": ["b"], "method": "GET", "url": f"/users/{ALICE}/contactFolders/{folder}/contacts"},
    ]
    res = {p["id"]: p for p in g.post("/$batch", json={"requests": parts}).json()["responses"]}
    assert [res[k]["status"] for k in "abc"] == [201, 404, 424]


def test_batch_over_twenty_requests_is_400(graph_env):
    _, _, g = graph_env
    parts = [{"id": str(i), "method": "GET", "url": f"/users/{ALICE}/contactFolders"} for i in range(21)]
    assert_graph_error(g.post("/$batch", json={"requests": parts}), 400, "BadRequest")
    assert g.post("/$batch", json={"requests": parts[:20]}).status_code == 200
    assert_graph_error(g.post("/$batch", json={"requests": [parts[0], parts[0]]}), 400, "BadRequest")
    assert_graph_error(g.post("/$batch", json={"nope": []}), 400, "BadRequest")


def test_throttle_429_and_503_carry_retry_after_then_clear(graph_env):
    emu, _, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, {"givenName": "Fragile"})
    path = f"/users/{ALICE}/contacts/{c['id']}"
    emu.reset_stats()
    emu.inject_fault("graph:get contact", "throttle_429", count=1, back_off_ms=1500)
    r = g.get(path)
    assert_graph_error(r, 429, "TooManyRequests")
    assert r.headers["Retry-After"] == "2"
    assert g.get(path).status_code == 200
    emu.inject_fault("graph:update contact", "http_503", count=1, back_off_ms=3000)
    r = g.patch(path, json={"surname": "x"})
    assert_graph_error(r, 503, "ServiceUnavailable")
    assert r.headers["Retry-After"] == "3"
    assert g.get(path).json()["surname"] is None                      # the 503 changed nothing
    assert g.patch(path, json={"surname": "x"}).status_code == 200
    stats = emu.stats()
    assert stats["graph:get contact"] == 3 and stats["graph:update contact"] == 2


def test_delay_drop_and_wildcards(graph_env):
    emu, ca, g = graph_env
    path = f"/users/{ALICE}/contactFolders"
    emu.inject_fault("graph:list contactFolders", "delay", count=1, delay_ms=700)
    started = time.monotonic()
    assert g.get(path).status_code == 200
    assert time.monotonic() - started >= 0.7
    emu.inject_fault("graph:*", "drop", count=1)
    with pytest.raises(httpx.TransportError):
        g.get(path)
    assert g.get(path).status_code == 200
    # An EWS wildcard fault does not touch Graph requests (and stays armed for EWS).
    emu.inject_fault("*", "server_busy", count=1)
    assert g.get(path).status_code == 200
    assert [f["operation"] for f in emu.admin("/_emulator/faults")["faults"]] == ["*"]
    emu.clear_faults()
    with pytest.raises(RuntimeError, match="HTTP 400"):
        emu.inject_fault("graph:delta", "server_busy")
    with pytest.raises(RuntimeError, match="HTTP 400"):
        emu.inject_fault("GetItem", "throttle_429")


def test_faults_inside_a_batch_answer_per_part(graph_env):
    emu, _, g = graph_env
    emu.inject_fault("graph:list contacts", "throttle_429", count=1, back_off_ms=1000)
    parts = [{"id": "1", "method": "GET", "url": f"/users/{ALICE}/contacts"},
             {"id": "2", "method": "GET", "url": f"/users/{ALICE}/contactFolders"}]
    r = g.post("/$batch", json={"requests": parts})
    assert r.status_code == 200
    res = {p["id"]: p for p in r.json()["responses"]}
    assert res["1"]["status"] == 429 and res["1"]["headers"]["Retry-After"] == "1"
    assert res["2"]["status"] == 200
    emu.inject_fault("graph:batch", "http_503", count=1)
    assert_graph_error(g.post("/$batch", json={"requests": parts}), 503, "ServiceUnavailable")


def test_fifth_concurrent_request_per_app_and_mailbox_is_throttled(graph_env):
    emu, ca, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, {"givenName": "Busy"})
    emu.reset_stats()
    emu.inject_fault("graph:get contact", "delay", count=4, delay_ms=4000)
    token = g.http.headers["Authorization"].split(" ", 1)[1]
    results: list[int] = []

    def slow() -> None:
        client = Graph(emu, ca, token)
        try:
            results.append(client.get(f"/users/{ALICE}/contacts/{c['id']}").status_code)
        finally:
            client.close()

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: emu.stats().get("graph:get contact", 0) >= 4, timeout=10, what="4 requests in flight")
        r = g.get(f"/users/{ALICE}/contactFolders")
        err = assert_graph_error(r, 429, "ApplicationThrottled")
        assert "MailboxConcurrency" in err["message"] and int(r.headers["Retry-After"]) >= 1
        # The limit is per app and per mailbox: the same app on bob, and another app on bob, pass.
        assert g.get(f"/users/{BOB}/contactFolders").status_code == 200
        other = Graph(emu, ca, msal_token(emu, ca, *SCOPED_APP))
        assert other.get(f"/users/{BOB}/contactFolders").status_code == 200
        other.close()
    finally:
        for t in threads:
            t.join(timeout=30)
    assert results == [200, 200, 200, 200]
    assert g.get(f"/users/{ALICE}/contactFolders").status_code == 200
    assert emu.admin("/_emulator/stats")["graph_over_concurrency"] == 1       # the admin API counts the refusal
