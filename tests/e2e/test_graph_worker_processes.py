"""Several worker processes on one mailbox over Graph: Exchange Online runs at most 4 concurrent
requests per app per mailbox and answers the 5th with 429 (the emulator enforces it and counts
the refusals). crmsync's processes count that limit together in the broker's Redis, so an
initial sync by two worker processes of two pool processes each (and the producer) converges
without a single 429 for the limit, and a Retry-After one process meets holds the others back."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import sqlalchemy as sa

from tests.support.pipeline import FOLDER, GRAPH_APP, GRAPH_SECRET, GRAPH_TENANT, MAILBOX, Pipeline, wait_until

N = 400


def _seed(p: Pipeline, n: int, first: int = 0) -> None:
    from crmsync.cli.demo_data import demo_accounts

    template = demo_accounts(30)
    rows = []
    for i in range(first, first + n):
        row = dict(template[i % len(template)])
        row.update(account_no=f"W-{i:05d}", email=f"person{i}@workers{i % 13}.example", is_active=True)
        rows.append(row)
    cols = list(rows[0])
    with p.crm.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO accounts ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"),
                     rows)


def _contacts_in_folder(p: Pipeline) -> int:
    """Contacts in the sync folder, counted over Graph as the mailbox owner's app would."""
    import ssl

    import httpx

    verify = ssl.create_default_context(cafile=p.graph_ca)
    token = httpx.post(f"{p.emulator.base_url}/{GRAPH_TENANT}/oauth2/v2.0/token", verify=verify, timeout=30,
                       data={"grant_type": "client_credentials", "client_id": GRAPH_APP, "client_secret": GRAPH_SECRET,
                             "scope": "https://graph.microsoft.com/.default"}).json()["access_token"]
    with httpx.Client(base_url=p.emulator.graph_base + "/", verify=verify, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        folders = http.get(f"users/{MAILBOX}/contactFolders", params={"$top": "100"}).json()["value"]
        folder = next(f["id"] for f in folders if f["displayName"] == FOLDER)
        n, url = 0, f"users/{MAILBOX}/contactFolders/{quote(folder, safe='')}/contacts?$select=id&$top=1000"
        while url:
            page = http.get(url).json()
            n += len(page["value"])
            url = page.get("@odata.nextLink")
        return n


def _linked(p: Pipeline) -> int:
    return p.state("SELECT count(*) AS n FROM links WHERE item_id IS NOT NULL")[0]["n"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, redis_server):
    """Two worker processes of two pool processes each, and the producer, on one Graph mailbox."""
    p = Pipeline(tmp_path_factory.mktemp("graph-workers"), "sqlite", api="graph", worker_concurrency=2,
                 batch_size=40, broker_url=redis_server.url(redis_server.new_database()))
    try:
        p.start_worker("w1")
        p.start_worker("w2")
        wait_until(lambda: "ready" in p.log("w1") and "ready" in p.log("w2"), 60, what="two workers")
        yield p
    finally:
        p.close()


def test_worker_processes_share_the_mailbox_limit_and_converge_without_429s(two_workers):
    p = two_workers
    _seed(p, N)
    p.emulator.reset_stats()
    p.start_producer()
    wait_until(lambda: _linked(p) >= N, 180, interval=0.5, what=f"{N} links")
    p.settle(timeout=120)
    stats = p.emulator.admin("/_emulator/stats")
    assert stats["graph_over_concurrency"] == 0, stats
    assert stats["requests"].get("graph:create contact") == N, stats    # each contact created once
    assert not p.dead_events()
    assert _linked(p) == N == _contacts_in_folder(p)


def test_a_429_storm_with_retry_after_is_waited_out_by_every_process(two_workers):
    """Graph answers the next 30 requests 429 with Retry-After: 1 (the emulator's fault API) while
    100 more accounts arrive: the workers wait it out (in-process and through Celery), every
    contact is created once, nothing is dead-lettered, and the limit still holds."""
    p = two_workers
    p.settle(timeout=120)
    p.emulator.reset_stats()
    p.emulator.inject_fault("graph:*", "throttle_429", count=30, back_off_ms=1000)
    _seed(p, 100, first=N)
    wait_until(lambda: _linked(p) >= N + 100, 180, interval=0.5, what=f"{N + 100} links")
    p.settle(timeout=120)
    stats = p.emulator.admin("/_emulator/stats")
    assert stats["graph_over_concurrency"] == 0, stats
    assert stats["requests"].get("graph:create contact", 0) >= 100, stats
    assert not p.dead_events()
    assert _linked(p) == N + 100 == _contacts_in_folder(p)       # none created twice
