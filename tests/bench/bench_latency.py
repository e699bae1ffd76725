"""Benchmark: how long a single-field edit takes to reach the other side, as a user feels it.

A whole pipeline (emulator, Redis, producer, Celery worker, SQLite CRM) with a long safety-net
poll, so only the doorbells can be fast. Edits alternate between the CRM (plain SQL) and
Outlook (exchangelib as the mailbox owner), one at a time; each is timed from its commit on
one side to the value being readable on the other. Prints p50/p90/p99/max each way and the
EWS requests crmsync made per change (the benchmark's own reads and writes left out). Not a
test: run it as a script.

    python tests/bench/bench_latency.py --edits 60 --workers 1 --workers 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.support.pipeline import Pipeline, wait_until  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


class Bench:
    def __init__(self, pipeline: Pipeline, accounts: int) -> None:
        self.p = pipeline
        self.own = Counter()   # EWS requests this script made itself, by operation
        self.records: list[tuple[str, str]] = []
        for i in range(accounts):
            account_no, email = f"L-{i:04d}", f"lat{i}.{uuid.uuid4().hex[:4]}@example.org"
            pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, "
                                 "last_name, email, is_active) VALUES (:n, 'Latency Ltd', 'La', "
                                 ":l, :e, 1)", n=account_no, l=f"Tency{i}", e=email)
            self.records.append((account_no, email))
        account, folder = pipeline.outlook()
        emails = {e for _, e in self.records}
        self.contacts = wait_until(lambda: self._all_contacts(folder, emails), 300, interval=1,
                                   what="every account in Exchange")
        pipeline.settle(timeout=300)

    @staticmethod
    def _all_contacts(folder, emails: set[str]):
        found = {e.email: c for c in folder.all() for e in (c.email_addresses or [])
                 if e.email in emails}
        return found if len(found) == len(emails) else None

    def crm_title(self, account_no: str) -> str | None:
        return self.p.crm.query("SELECT job_title FROM accounts WHERE account_no = :n",
                                n=account_no)[0]["job_title"]

    def crm_to_exchange(self, account_no: str, email: str, title: str) -> float:
        contact = self.contacts[email]
        self.p.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n",
                           t=title, n=account_no)
        started = time.monotonic()

        def arrived() -> bool:
            contact.refresh()
            self.own["GetItem"] += 1
            return contact.job_title == title
        wait_until(arrived, 120, interval=0.02, what=f"{title!r} in Exchange")
        return time.monotonic() - started

    def exchange_to_crm(self, account_no: str, email: str, title: str) -> float:
        contact = self.contacts[email]
        contact.refresh()
        self.own["GetItem"] += 1
        contact.job_title = title
        contact.save(update_fields=["job_title"])
        self.own["UpdateItem"] += 1
        started = time.monotonic()
        wait_until(lambda: self.crm_title(account_no) == title, 120, interval=0.02,
                   what=f"{title!r} in the CRM")
        return time.monotonic() - started


def run(workers: int, edits: int, accounts: int, poll_s: float, console: Console) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        pipeline = Pipeline(Path(tmp), "sqlite", worker_concurrency=workers, poll_interval_s=poll_s,
                            redrive_after_s=300)
        try:
            pipeline.start_worker()
            pipeline.start_producer()
            pipeline.outlook()
            bench = Bench(pipeline, accounts)
            console.print(f"[dim]{accounts} linked accounts, {workers} worker process(es), "
                          f"poll {poll_s:g} s; {edits} edits…[/dim]")
            pipeline.emulator.reset_stats()
            started = time.monotonic()
            took: dict[str, list[float]] = {"CRM → Exchange": [], "Exchange → CRM": []}
            for i in range(edits):
                account_no, email = bench.records[i % len(bench.records)]
                title = f"Edit {i} {uuid.uuid4().hex[:4]}"
                if i % 2 == 0:
                    took["CRM → Exchange"].append(bench.crm_to_exchange(account_no, email, title))
                else:
                    took["Exchange → CRM"].append(bench.exchange_to_crm(account_no, email, title))
            pipeline.settle(timeout=60)
            elapsed = time.monotonic() - started
            stats = Counter(pipeline.emulator.stats())
            ours = stats - bench.own
            return {"took": took, "ews": ours, "elapsed": elapsed, "edits": edits}
        finally:
            pipeline.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=60, help="edits in all, alternating sides")
    parser.add_argument("--accounts", type=int, default=60, help="linked accounts")
    parser.add_argument("--workers", type=int, action="append",
                        help="worker processes (repeat for several runs); default 1")
    parser.add_argument("--poll", type=float, default=60.0, help="producer poll interval, s")
    args = parser.parse_args()
    console = Console()
    table = Table(title="Edit latency: commit on one side → readable on the other")
    for col in ("workers", "direction", "n", "p50 s", "p90 s", "p99 s", "max s",
                "waited for the poll", "EWS req / change"):
        table.add_column(col, justify="right")
    for workers in args.workers or [1]:
        result = run(workers, args.edits, args.accounts, args.poll, console)
        per_change = sum(result["ews"].values()) / result["edits"]
        for direction, values in result["took"].items():
            if not values:
                continue
            slow = sum(1 for v in values if v >= min(args.poll, 5.0))
            table.add_row(str(workers), direction, str(len(values)),
                          f"{statistics.median(values):.2f}", f"{percentile(values, 90):.2f}",
                          f"{percentile(values, 99):.2f}", f"{max(values):.2f}", str(slow),
                          f"{per_change:.1f}")
        top = ", ".join(f"{op} {n}" for op, n in result["ews"].most_common(6))
        console.print(f"[dim]{workers} worker(s): crmsync's EWS requests in "
                      f"{result['elapsed']:.0f} s: {top}[/dim]")
    console.print(table)


if __name__ == "__main__":
    main()
