"""The Prometheus endpoint during a real pipeline run: the producer serves /metrics
(``[metrics] port``), ``crmsync metrics-server`` serves the same numbers on its own, and both
show the counters of the Celery pool processes (multiprocess mode) moving as changes sync."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.emulator_proc import free_port
from tests.support.pipeline import MAILBOX, Pipeline, wait_until


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("metrics")
    p = Pipeline(tmp, "sqlite", broker_url=redis_server.url(redis_server.new_database()))
    p.metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus")}
    p.producer_port, p.server_port = free_port(), free_port()
    try:
        p.start_worker(env=p.metrics_env)
        p.start_producer(env={**p.metrics_env, "CRMSYNC_METRICS_PORT": str(p.producer_port)})
        p.start("metrics-server", "metrics-server", "--port", str(p.server_port), env=p.metrics_env)
        p.outlook()
        p.settle()
        yield p
    finally:
        p.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in samples.items()
               if n == name and all(dict(lbl).get(k) == want for k, want in labels.items()))


def _insert_account(pipeline: Pipeline) -> str:
    account_no = f"M-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, last_name, email, is_active) "
                         "VALUES (:no, :company, :last, :email, 1)", no=account_no, company="Metrics Ltd",
                         last="Counter", email=f"{account_no.lower()}@metrics.example")
    return account_no


@pytest.mark.parametrize("which", ["producer_port", "server_port"])
def test_counters_move_while_changes_sync(pipeline, which):
    port = getattr(pipeline, which)
    before = wait_until(lambda: scrape(port), 30, what=f"/metrics on {which}")
    applied0 = total(before, "crmsync_events_applied_total", source="crm", mailbox=MAILBOX)
    published0 = total(before, "crmsync_events_published_total", source="crm", mailbox=MAILBOX)
    lag0 = total(before, "crmsync_sync_lag_seconds_count", source="crm", mailbox=MAILBOX)

    _insert_account(pipeline)
    after = wait_until(
        lambda: (s := scrape(port)) and total(s, "crmsync_events_applied_total", source="crm", mailbox=MAILBOX)
        > applied0 and s, 60, what="the applied counter to move")
    assert total(after, "crmsync_events_published_total", source="crm", mailbox=MAILBOX) > published0
    assert total(after, "crmsync_sync_lag_seconds_count", source="crm", mailbox=MAILBOX) > lag0
    assert total(after, "crmsync_state_up") == 1
    assert total(after, "crmsync_last_sync_timestamp_seconds", mailbox=MAILBOX) > 0
    assert ("crmsync_queue_depth", (("queue", f"{pipeline.queue}.to_exchange"),)) in after
    pipeline.settle()


def test_exchange_side_counts_too(pipeline):
    from exchangelib import Contact

    before = scrape(pipeline.server_port)
    applied0 = total(before, "crmsync_events_applied_total", source="exchange", mailbox=MAILBOX)
    account, folder = pipeline.outlook()
    surname = f"Change{uuid.uuid4().hex[:6]}"
    Contact(account=account, folder=folder, given_name="Ex", surname=surname, display_name=f"Ex {surname}",
            company_name="Outlook Side").save()
    wait_until(lambda: total(scrape(pipeline.server_port), "crmsync_events_applied_total", source="exchange",
                             mailbox=MAILBOX) > applied0, 60, what="the exchange applied counter to move")
    pipeline.settle()


def test_worker_logs_one_json_line_per_applied_event(pipeline):
    """The worker's log is a file, not a terminal: JSON lines, one per applied event with its id,
    mailbox, record key and action; and never the Exchange password."""
    import json

    from tests.support.pipeline import SERVICE_PASSWORD

    pipeline.settle()
    applied = {row["id"] for row in pipeline.state("SELECT id FROM events WHERE status = 'applied' "
                                                   "AND outcome NOT IN ('missing', 'done-already')")}
    lines = []
    for raw in pipeline.log("worker").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue   # Celery's start-up banner is printed, not logged
    logged = [line for line in lines if line.get("event") == "event.applied"]
    assert applied and {line["event_id"] for line in logged} == applied
    assert len(logged) == len(applied)
    for line in logged:
        assert line["mailbox"] == MAILBOX and line["action"]
        assert line["crm_key"] or line["item_id"]
    assert SERVICE_PASSWORD not in pipeline.log("worker")


def test_dead_letters_count(pipeline):
    """A record no link can hold (an account without a number) is a dead letter at once: the dead
    counter and the event-log gauge move, the applied counter does not count it."""
    before = scrape(pipeline.server_port)
    dead0 = total(before, "crmsync_events_dead_total", source="crm", mailbox=MAILBOX)
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, email, is_active) "
                         "VALUES ('', 'No Number Ltd', :e, 1)", e=f"nonum.{uuid.uuid4().hex[:6]}@example.org")
    try:
        after = wait_until(
            lambda: (s := scrape(pipeline.server_port))
            and total(s, "crmsync_events_dead_total", source="crm", mailbox=MAILBOX) > dead0 and s,
            60, what="the dead counter to move")
        assert total(after, "crmsync_events", mailbox=MAILBOX, status="dead") >= 1
    finally:
        pipeline.crm.execute("DELETE FROM accounts WHERE account_no = ''")


def test_what_waits_for_a_person_shows_per_mailbox(pipeline):
    """Held deletes, open conflicts and review items are gauges read from the state database at
    scrape time (the same numbers `crmsync status --check` lists): recorded through the state
    adapters the sync uses, they show on both endpoints; decided, they go back to 0."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from crmsync.adapters.state.held import SqlHeldConflicts, SqlHeldDeletes
    from crmsync.adapters.state.review import SqlReviewQueue

    for port in (pipeline.producer_port, pipeline.server_port):
        s = wait_until(lambda port=port: scrape(port), 30, what="/metrics")
        for name in ("crmsync_held_deletes", "crmsync_open_conflicts", "crmsync_review_items"):
            assert s[name, (("mailbox", MAILBOX),)] == 0           # shown as 0, so an alert can compare
    engine = sa.create_engine(pipeline.crm.state_url)
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:6].upper()
    held = SqlHeldDeletes(engine).note(MAILBOX, [(f"account:H1-{tag}", "crm"), (f"account:H2-{tag}", "exchange")],
                                       "held", now, reason="brake")
    conflicts = SqlHeldConflicts(engine)
    conflicts.hold(MAILBOX, f"account:C-{tag}", [("job_title", "Admiral", "Rear Admiral", "Captain")], now)
    review = SqlReviewQueue(engine)
    review.hold(MAILBOX, "crm", f"account:R-{tag}", "Review Ltd", [], "ambiguous", now)
    try:
        for port in (pipeline.producer_port, pipeline.server_port):
            s = wait_until(lambda port=port: (s := scrape(port))
                           and total(s, "crmsync_held_deletes", mailbox=MAILBOX) == 2 and s, 30,
                           what="2 held deletes on /metrics")
            assert total(s, "crmsync_open_conflicts", mailbox=MAILBOX) == 1
            assert total(s, "crmsync_review_items", mailbox=MAILBOX) == 1
        check = pipeline.cli("status", "--check", check=False)
        assert "2 delete(s) held by the delete brake" in check.stdout
        assert "1 conflict(s) wait for a person" in check.stdout
    finally:
        SqlHeldDeletes(engine).set_status(held, "discarded", now)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM held_conflicts WHERE crm_key = :k"), {"k": f"account:C-{tag}"})
            conn.execute(sa.text("DELETE FROM review_items WHERE record_key = :k"), {"k": f"account:R-{tag}"})
        engine.dispose()
    s = scrape(pipeline.server_port)
    assert total(s, "crmsync_held_deletes", mailbox=MAILBOX) == 0
    assert total(s, "crmsync_open_conflicts", mailbox=MAILBOX) == 0
    assert total(s, "crmsync_review_items", mailbox=MAILBOX) == 0
