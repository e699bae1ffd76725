"""The console's security over HTTP, against the real app on real SQLite databases migrated by
crmsync and a private redis-server as broker: no page or action without a session, no POST
without the CSRF token, the session cookie HttpOnly and SameSite, users stored as argon2 hashes,
actions logged with who did them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from crmsync.bootstrap import container_for
from crmsync.config import load_settings
from crmsync.console.app import ACTIONS, PAGES
from schemas.state_tables import events
from tests.support.deployment import sqlite_deployment

MAILBOX = "alice@example.com"
PASSWORD = "correct horse battery staple"


def cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_CONFIG"}
    return subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), *args], input=stdin,
                          env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("console")
    with sqlite_deployment(tmp, redis_server.url(redis_server.new_database()), (MAILBOX,)) as (config, state):
        users = tmp / "users"
        config.write_text(config.read_text() +
                          f'[console]\nusers_file = "{users}"\n')
        done = cli(config, "console", "add-user", "ada", stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
        from crmsync.cli.console import build_app

        container = container_for(load_settings(str(config)))
        yield {"config": config, "state": state, "users": users, "app": build_app(container)}
        container.dispose()


def client(stack) -> TestClient:
    return TestClient(stack["app"], base_url="http://127.0.0.1", follow_redirects=False)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found[1]


def logged_in(stack) -> tuple[TestClient, str]:
    c = client(stack)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf": token, "username": "ada", "password": PASSWORD})
    assert r.status_code == 303, r.text
    return c, csrf_of(c.get("/history").text)


def test_add_user_stores_an_argon2_hash_not_the_password(stack):
    text = stack["users"].read_text()
    assert PASSWORD not in text
    assert re.fullmatch(r"ada:\$argon2id\$\S+\n", text), text
    assert oct(stack["users"].stat().st_mode & 0o777) == "0o600"
    secret = Path(str(stack["users"]) + ".secret")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"


def test_every_page_and_action_sends_to_login_without_a_session(stack):
    c = client(stack)
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    for path in ACTIONS:
        r = c.post(path, data={"csrf": "x", "ids": "1", "decision": "approve", "crm_key": "account:A-1",
                               "item_id": "x", "key": "account:A-1", "value": "v"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


def test_wrong_password_is_refused(stack):
    c = client(stack)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf": token, "username": "ada", "password": "wrong password"})
    assert r.status_code == 401
    assert c.get("/").status_code == 303
    r = c.post("/login", data={"csrf": token, "username": "nobody", "password": PASSWORD})
    assert r.status_code == 401


def test_login_without_csrf_is_refused(stack):
    c = client(stack)
    c.get("/login")
    r = c.post("/login", data={"username": "ada", "password": PASSWORD})
    assert r.status_code == 403


def test_every_action_without_the_csrf_token_is_refused(stack):
    c, token = logged_in(stack)
    for path in ACTIONS:
        for sent in ({}, {"csrf": "forged-" + token}):
            r = c.post(path, data={**sent, "ids": "1", "decision": "approve", "crm_key": "account:A-1",
                                   "item_id": "x", "key": "account:A-1", "value": "v", "event_id": "1"})
            assert r.status_code == 403, (path, sent, r.status_code)
    assert c.get("/history").status_code == 200   # still logged in: a refused POST did nothing


def test_session_cookie_is_httponly_and_samesite(stack):
    c = client(stack)
    r = c.get("/login")
    cookie = r.headers["set-cookie"]
    assert "crmsync_console=" in cookie
    assert "httponly" in cookie.lower()
    assert re.search(r"samesite=(strict|lax)", cookie.lower())
    assert PASSWORD not in cookie


def test_pages_answer_when_logged_in(stack):
    c, _ = logged_in(stack)
    for path in ("/", "/link", "/review", "/conflicts", "/deletes", "/events", "/history?record=account:A-1"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert 'name="csrf"' in r.text


def test_replay_of_a_dead_letter_is_done_and_logged_with_the_user(stack):
    state = stack["state"]
    with state.begin() as conn:
        eid = conn.execute(events.insert().values(
            source="crm", mailbox=MAILBOX, op="upsert", crm_key="account:A-9", dedup_key=uuid.uuid4().hex,
            status="dead", attempts=8, last_error="BadRecord: email is not an email address",
            created_at=datetime.now(UTC)).returning(events.c.id)).scalar_one()
    c, token = logged_in(stack)
    page = c.get("/events?status=dead").text
    assert "BadRecord: email is not an email address" in page and f"/events/{eid}" in page
    with capture_logs() as logs:
        r = c.post("/events/replay", data={"csrf": token, "event_id": str(eid)})
    assert r.status_code == 303
    with state.connect() as conn:
        assert conn.execute(select(events.c.status, events.c.attempts).where(events.c.id == eid)).one() == ("published", 0)
    assert any(e["event"] == "console.action" and e["user"] == "ada" and e["action"] == "events.replay" for e in logs)
    assert "replayed 1 of 1 event(s)" in c.get(f"/events/{eid}").text


def serve(stack, tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `crmsync console ARGS` on a free port until it answers /login; (port, what it printed)."""
    import socket

    import httpx

    from tests.support.pipeline import wait_until

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"console-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_CONFIG"}
    with out.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(stack["config"]), "console",
                                 "--port", str(port), *args], stdout=log, stderr=log, env={**env, "COLUMNS": "300"})
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200, 60,
                   what="the console to answer")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 303
    finally:
        proc.terminate()
        proc.wait(20)
    return port, out.read_text()


def test_loopback_by_default_and_a_loud_warning_elsewhere_without_tls(stack, tmp_path):
    _, quiet = serve(stack, tmp_path)
    assert "WARNING" not in quiet
    port, loud = serve(stack, tmp_path, "--host", "0.0.0.0")
    assert f"WARNING: the console listens on 0.0.0.0:{port} WITHOUT TLS" in " ".join(loud.split())
    assert PASSWORD not in loud


def test_the_session_cookie_is_secure_when_served_over_tls(stack):
    from crmsync.cli.console import build_app

    container = container_for(load_settings(str(stack["config"])))
    try:
        c = TestClient(build_app(container, https=True), base_url="https://127.0.0.1", follow_redirects=False)
        assert "secure" in c.get("/login").headers["set-cookie"].lower()
        assert "secure" not in client(stack).get("/login").headers["set-cookie"].lower()
    finally:
        container.dispose()


def test_review_page_lists_waiting_records_and_a_refused_decision_is_logged_with_the_user(stack):
    """The page shows the new record and its candidates side by side; a decision the service
    refuses (an item decided already, or none such) comes back as its message and is logged."""
    container = container_for(load_settings(str(stack["config"])))
    try:
        queue, now = container.review_queue, datetime.now(UTC)
        tag = uuid.uuid4().hex[:6]
        waiting = queue.hold(MAILBOX, "crm", f"account:R-{tag}", f"Rosalind Franklin{tag}",
                             [{"key": f"item-{tag}-1", "name": f"Rosalind Franklin{tag}", "score": 0.93,
                               "agree": ["email", "name"], "disagree": ["phone"]},
                              {"key": f"item-{tag}-2", "name": f"R. Franklin{tag}", "score": 0.91, "agree": ["name"],
                               "disagree": ["email"]}], "ambiguous: test", now)
        decided = queue.hold(MAILBOX, "exchange", f"item-{tag}-9", f"Decided{tag}", [], "test", now)
        assert queue.decide(decided.id, "rejected", None, "cli:someone", now)
    finally:
        container.dispose()
    c, token = logged_in(stack)
    page = c.get("/review").text
    assert f"Rosalind Franklin{tag}" in page and f"account:R-{tag}" in page
    assert f"item-{tag}-1" in page and f"item-{tag}-2" in page and "0.93" in page and "phone" in page
    assert f'action="/review/{waiting.id}/accept"' in page and f'action="/review/{waiting.id}/reject"' in page
    assert f"Decided{tag}" not in page                                   # only open items
    with capture_logs() as logs:
        r = c.post(f"/review/{decided.id}/reject", data={"csrf": token})
        assert r.status_code == 303 and r.headers["location"] == "/review"
        assert f"review item {decided.id}: already rejected by cli:someone" in c.get("/review").text
        r = c.post("/review/987654/accept", data={"csrf": token, "candidate": "x"})
        assert r.status_code == 303
        assert "review item 987654: no such item" in c.get("/review").text
    refused = [e for e in logs if e["event"] == "console.action_refused"]
    assert [(e["user"], e["action"], e["review_item"]) for e in refused] == [("ada", "review.reject", decided.id),
                                                                           ("ada", "review.accept", 987654)]
