"""Several worker processes on one mailbox over Graph: Exchange Online runs at most 4 concurrent
requests per app per mailbox and answers the 5th with 429 (the emulator enforces it and counts
the refusals). crmsync's processes count that limit together in the broker's Redis, so an
initial sync by two worker processes of two pool processes each (and the producer) converges
without a single 429 for the limit, and a Retry-After one process meets holds the others back."""

from __future__ import annotations

import sqlalchemy as sa

from tests.support.pipeline import Pipeline, wait_until

N = 400


def _seed(p: Pipeline, n: int) -> None:
    from crmsync.cli.demo_data import demo_accounts

    template = demo_accounts(30)
    rows = []
    for i in range(n):
        row = dict(template[i % len(template)])
        row.update(account_no=f"W-{i:05d}", email=f"person{i}@workers{i % 13}.example", is_active=True)
        rows.append(row)
    cols = list(rows[0])
    with p.crm.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO accounts ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"),
                     rows)


def _linked(p: Pipeline) -> int:
    return p.state("SELECT count(*) AS n FROM links WHERE item_id IS NOT NULL")[0]["n"]


def test_worker_processes_share_the_mailbox_limit_and_converge_without_429s(tmp_path, redis_server):
    p = Pipeline(tmp_path, "sqlite", api="graph", worker_concurrency=2, batch_size=40,
                 broker_url=redis_server.url(redis_server.new_database()))
    try:
        _seed(p, N)
        p.start_worker("w1")
        p.start_worker("w2")
        wait_until(lambda: "ready" in p.log("w1") and "ready" in p.log("w2"), 60, what="two workers")
        p.emulator.reset_stats()
        p.start_producer()
        wait_until(lambda: _linked(p) >= N, 180, interval=0.5, what=f"{N} links (linked so far: {_linked(p)})")
        p.settle(timeout=120)
        stats = p.emulator.admin("/_emulator/stats")
        assert stats["graph_over_concurrency"] == 0, stats
        assert stats["requests"].get("graph:create contact") == N, stats    # each contact created once
        assert not p.dead_events()
        assert _linked(p) == N
    finally:
        p.close()
