"""Benchmark: the console's pages with 50,000 links against the same pages on an empty state
database, in the same run.

Two SQLite deployments made by crmsync's own migrations, each with its own emulator (EWS): one
empty, one seeded in bulk with N accounts in the CRM, N contacts in the mailbox's sync folder
(crmsync's own bulk create), N links between them (synced), N applied events with their field
diffs, 200 dead letters and 100 held deletes; and one person in both the CRM and the folder,
unlinked, whom the Link page's searches look for (issue 12: the CRM side and the folder side are
bounded look-ups, not reads of either whole). Each page is requested through the real app
(Starlette's test client, logged in) after one warm-up (doctor's checks are cached by the
overview, see README "The console"); prints the median and the worst of R requests per page and
the ratio seeded / empty. Not a test: no timed assertions.

    python tests/bench/bench_console.py               # N = 50000, R = 20
    python tests/bench/bench_console.py --n 10000 --repeat 10
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from starlette.testclient import TestClient  # noqa: E402

from crmsync.bootstrap import container_for  # noqa: E402
from crmsync.config import load_settings  # noqa: E402
from crmsync.console.users import add_user  # noqa: E402
from schemas.crm_tables import accounts  # noqa: E402
from schemas.state_tables import event_changes, events, held_deletes, links  # noqa: E402
from tests.bench.bench_emulator import _cpu_seconds  # noqa: E402
from tests.support.deployment import sqlite_deployment  # noqa: E402
from tests.support.emulator_proc import running_emulator  # noqa: E402

MAILBOX = "alice@example.com"
SERVICE, PASSWORD = "svc@example.com", "bench-password"   # throwaway, loopback-only emulator
PAGES = ("/", "/link", "/link?links=account:A-049", "/events", "/events?status=dead", "/events?record=account:A-00042",
         "/deletes", "/conflicts", "/history?record=account:A-00042")
#: The Link page's searches: a CRM record (with its suggested contacts), the folder (with the
#: suggested records of its unlinked hits), by name, e-mail, phone; and a name many records share.
SEARCHES = ("/link?account=quartermaine", "/link?account=%2B1%20555%20999%200001", "/link?account=given4242",
            "/link?folder=quartermaine", "/link?folder=zelda.q%40example.net", "/link?folder=surname4242",
            "/link?folder=company%2042")


def person(i: int) -> dict[str, str]:
    return {"first_name": f"Given{i}", "last_name": f"Surname{i}", "company_name": f"Company {i % 97}",
            "email": f"person{i}@example.org", "phone_business": f"+1 555 {i:07d}"}


ZELDA = {"first_name": "Zelda", "last_name": "Quartermaine", "company_name": "Hyrule Ltd",
         "email": "zelda.q@example.net", "phone_mobile": "+1 555 999 0001"}


def seed_sides(container, n: int) -> list[str]:
    """N accounts and N contacts (stamped, as crmsync creates them), and Zelda on both sides
    unlinked; the contacts' item ids, in account order."""
    with container.crm_engine.begin() as conn:
        conn.execute(accounts.insert(), [{"account_no": f"A-{i:05d}", **person(i)} for i in range(n)])
        conn.execute(accounts.insert(), [{"account_no": "Z-1", **ZELDA}])
    side = container.exchange_side(MAILBOX)
    ids: list[str] = []
    for start in range(0, n, 1000):
        made = side.create_many([(f"account:A-{i:05d}", person(i)) for i in range(start, min(n, start + 1000))])
        bad = [m for m in made if isinstance(m, Exception)]
        if bad:
            raise SystemExit(f"create_many: {len(bad)} failed, first: {bad[0]!r}")
        ids.extend(m.item_id for m in made)   # type: ignore[union-attr]
    side.create("account:Z-1", ZELDA)     # stamped (as a copy of an earlier sync would be), not linked
    return ids


def seed(state, n: int, item_ids: list[str]) -> None:
    now = datetime.now(UTC)
    with state.begin() as conn:
        conn.execute(links.insert(), [{"mailbox": MAILBOX, "crm_key": f"account:A-{i:05d}", "item_id": item_ids[i],
                                       "base_json": "{}", "synced_at": now, "created_at": now}
                                      for i in range(n)])
        conn.execute(events.insert(), [{"source": "crm", "mailbox": MAILBOX, "op": "upsert",
                                        "crm_key": f"account:A-{i:05d}", "dedup_key": f"d-{i}", "status": "applied",
                                        "attempts": 1, "created_at": now, "applied_at": now, "outcome": "updated"}
                                       for i in range(n)])
        conn.execute(events.insert(), [{"source": "exchange", "mailbox": MAILBOX, "op": "upsert", "item_id": f"item-{i}",
                                        "dedup_key": f"dead-{i}", "status": "dead", "attempts": 8, "created_at": now,
                                        "last_error": "BadRecord: email is not an email address"} for i in range(200)])
        conn.execute(event_changes.insert(), [{"event_id": i + 1, "mailbox": MAILBOX, "crm_key": f"account:A-{i:05d}",
                                               "item_id": f"item-{i}", "action": "updated", "writes": "[]", "at": now}
                                              for i in range(n)])
        conn.execute(held_deletes.insert(), [{"mailbox": MAILBOX, "crm_key": f"account:A-{i:05d}", "side": "exchange",
                                              "status": "held", "noted_at": now} for i in range(100)])


def measure(tmp: Path, n: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(page -> request times, page -> the emulator's CPU seconds per request)."""
    from crmsync.cli.console import build_app

    os.environ["CRMSYNC_BENCH_EXCHANGE_PASSWORD"] = PASSWORD
    with running_emulator(tmp / "exchange", {MAILBOX: PASSWORD, SERVICE: PASSWORD}, ["--impersonator", SERVICE]) as emu, \
            sqlite_deployment(tmp, "redis://127.0.0.1:1/0", (MAILBOX,)) as (config, state):
        config.write_text(config.read_text().replace("[[mailbox]]", f"""[exchange]
endpoint = "{emu.endpoint}"
auth = "basic"
username = "{SERVICE}"
password_env = "CRMSYNC_BENCH_EXCHANGE_PASSWORD"
access = "impersonation"
[[mailbox]]""") + f'folder = "CRM Accounts"\n[console]\nusers_file = "{tmp / "users"}"\n')
        add_user(tmp / "users", "bench", "bench-password")
        container = container_for(load_settings(str(config)))
        container.exchange_account(MAILBOX)     # creates the sync folder
        if n:
            t0 = time.perf_counter()
            item_ids = seed_sides(container, n)
            print(f"seeded {n} accounts and {n} contacts in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            seed(state, n, item_ids)
            print(f"seeded {n} links, {n} events and diffs, 200 dead, 100 held deletes in {time.perf_counter() - t0:.1f} s")
        client = TestClient(build_app(container), base_url="http://127.0.0.1", follow_redirects=False)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)[1]
        assert client.post("/login", data={"csrf": token, "username": "bench", "password": "bench-password"}).status_code == 303
        times: dict[str, list[float]] = {}
        server: dict[str, float] = {}
        for page in PAGES + SEARCHES:
            first = client.get(page)    # warm-up (the overview runs doctor's checks once)
            assert first.status_code == 200, page
            if n and page in SEARCHES[:2] + SEARCHES[3:5]:
                assert "Quartermaine" in first.text, page   # the search found Zelda (and suggests her)
            times[page] = []
            cpu0 = _cpu_seconds(emu.pid)
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = client.get(page)
                times[page].append(time.perf_counter() - t0)
                assert r.status_code == 200
            server[page] = (_cpu_seconds(emu.pid) - cpu0) / repeat
        container.dispose()
        return times, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as empty_dir, tempfile.TemporaryDirectory() as full_dir:
        empty, _ = measure(Path(empty_dir), 0, args.repeat)
        full, server = measure(Path(full_dir), args.n, args.repeat)
    print(f"\n| page | empty: median ms | {args.n} links: median ms | worst ms | ratio | of which emulator CPU ms |")
    print("|---|---|---|---|---|---|")
    for page in PAGES + SEARCHES:
        e, f = statistics.median(empty[page]) * 1000, statistics.median(full[page]) * 1000
        print(f"| `{page}` | {e:.1f} | {f:.1f} | {max(full[page]) * 1000:.1f} | {f / e:.2f} | {server[page] * 1000:.0f} |")


if __name__ == "__main__":
    main()
