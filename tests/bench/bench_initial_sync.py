"""Benchmark: the initial sync of N CRM accounts into an empty mailbox, through the pipeline.

Beside it, in the same run and against the same emulator, the baseline: a plain exchangelib
``bulk_create`` of the same N contacts (``--api ews``, the default), or with ``--api graph`` the
pipeline over the emulator's Microsoft Graph front door (HTTPS, msal token) beside the plainest
Graph equivalent: ``$batch`` requests of 20 contact creates each, sent one after the other with
httpx and a token from the emulator's token endpoint. The emulator counts every request of both
front doors (Graph ones as ``graph:<operation>``; a ``$batch`` counts once as ``graph:batch``
and its parts again under their own operations; the HTTP requests printed count a ``$batch``
once). Prints both times, their ratio, then what a user sees
(``crmsync run`` with the shipped defaults, timed from the command's start, against the same
baseline), the HTTP requests per
synced contact and by operation, and the CPU seconds each side spent (the pipeline's workers
and emulator, the baseline's client and emulator): the wall-time ratio moves with the machine's
load (the pipeline runs several processes, the baseline one), the CPU figures much less. Not a
test: run it as a script.

    python tests/bench/bench_initial_sync.py --n 1000 --n 10000
    python tests/bench/bench_initial_sync.py --api graph --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.support.pipeline import (  # noqa: E402
    FOLDER,
    GRAPH_APP,
    GRAPH_SECRET,
    GRAPH_TENANT,
    MAILBOX,
    Pipeline,
    wait_until,
)

TARGET_RATIO = 1.5
#: `crmsync run` with the shipped defaults, timed from the command's start (issue: <= 1.3x).
TARGET_USER_RATIO = 1.3


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants (a Celery worker's
    pool processes), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:        # gone meanwhile
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(c) for c in children)


def seed_accounts(pipeline: Pipeline, n: int) -> list[dict]:
    from crmsync.cli.demo_data import demo_accounts

    template = demo_accounts(30)
    rows = []
    for i in range(n):
        row = dict(template[i % len(template)])
        row["account_no"] = f"B-{i:06d}"
        row["email"] = f"person{i}@bench{i % 97}.example"
        row["is_active"] = True
        rows.append(row)
    cols = list(rows[0])
    with pipeline.crm.engine.begin() as conn:
        import sqlalchemy as sa

        conn.execute(sa.text(f"INSERT INTO accounts ({', '.join(cols)}) VALUES "
                             f"({', '.join(':' + c for c in cols)})"), rows)
    return rows


def baseline_bulk_create(pipeline: Pipeline, rows: list[dict]) -> tuple[float, float]:
    """The same contacts, created with exchangelib alone, into a folder of their own:
    (seconds, CPU seconds of the client and the emulator)."""
    from exchangelib import Contact
    from exchangelib.folders import Contacts

    from crmsync.adapters.exchange.ews.mapping import contact_kwargs
    from schemas.canonical import ACCOUNT_FIELDS

    account = pipeline.outlook_account()
    folder = Contacts(parent=account.contacts, name=f"Baseline {time.time_ns()}")
    folder.save()
    items = [Contact(folder=folder, account=account,
                     **contact_kwargs({f: r.get(f) for f in ACCOUNT_FIELDS})) for r in rows]
    emulator = pipeline.emulator.proc.pid
    started, cpu, emu_cpu = time.perf_counter(), time.process_time(), cpu_seconds(emulator)
    account.bulk_create(folder=folder, items=items, chunk_size=100)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu + cpu_seconds(emulator) - emu_cpu
    assert folder.all().count() == len(rows)
    return elapsed, cpu


class GraphClient:
    """Plain httpx against the emulator's Graph front door, as the mailbox owner's app: a token
    from ``{base}/{tenant}/oauth2/v2.0/token`` (client credentials), the throwaway CA trusted."""

    def __init__(self, p: Pipeline) -> None:
        import ssl

        import httpx

        verify = ssl.create_default_context(cafile=p.graph_ca)
        token = httpx.post(f"{p.emulator.base_url}/{GRAPH_TENANT}/oauth2/v2.0/token", verify=verify, timeout=30,
                           data={"grant_type": "client_credentials", "client_id": GRAPH_APP,
                                 "client_secret": GRAPH_SECRET, "scope": "https://graph.microsoft.com/.default"})
        token.raise_for_status()
        self.http = httpx.Client(base_url=p.emulator.graph_base + "/", verify=verify, timeout=60,
                                 headers={"Authorization": f"Bearer {token.json()['access_token']}",
                                          "Prefer": 'IdType="ImmutableId"'})
        self.user = f"users/{MAILBOX}"

    def folder_id(self, name: str) -> str | None:
        folders = self.http.get(f"{self.user}/contactFolders", params={"$top": "100"}).json()["value"]
        return next((f["id"] for f in folders if f["displayName"] == name), None)

    def count(self, folder_id: str) -> int:
        from urllib.parse import quote

        n, url = 0, f"{self.user}/contactFolders/{quote(folder_id, safe='')}/contacts?$select=id&$top=1000"
        while url:
            page = self.http.get(url).json()
            n += len(page["value"])
            url = page.get("@odata.nextLink")
        return n


def baseline_graph_batch(pipeline: Pipeline, rows: list[dict]) -> tuple[float, float]:
    """The same contacts, created over Graph with ``$batch`` (20 POSTs per request, one request
    after the other) into a folder of their own: (seconds, CPU seconds of the client and the
    emulator). The bodies are the adapter's (stamped, as crmsync writes them)."""
    from urllib.parse import quote

    from crmsync.adapters.exchange.graph.mapping import create_body
    from schemas.canonical import ACCOUNT_FIELDS

    graph = GraphClient(pipeline)
    made = graph.http.post(f"{graph.user}/contactFolders", json={"displayName": f"Baseline {time.time_ns()}"})
    assert made.status_code == 201, made.text
    folder = made.json()["id"]
    url = f"/users/{MAILBOX}/contactFolders/{quote(folder, safe='')}/contacts"
    bodies = [create_body({f: r.get(f) for f in ACCOUNT_FIELDS}, f"account:{r['account_no']}") for r in rows]
    emulator = pipeline.emulator.proc.pid
    started, cpu, emu_cpu = time.perf_counter(), time.process_time(), cpu_seconds(emulator)
    for start in range(0, len(bodies), 20):
        parts = [{"id": str(i + 1), "method": "POST", "url": url, "body": body,
                  "headers": {"Content-Type": "application/json"}}
                 for i, body in enumerate(bodies[start:start + 20])]
        answer = graph.http.post("$batch", json={"requests": parts})
        assert answer.status_code == 200, answer.text
        assert all(r["status"] == 201 for r in answer.json()["responses"]), answer.text[:500]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu + cpu_seconds(emulator) - emu_cpu
    assert graph.count(folder) == len(rows)
    return elapsed, cpu


def synced_count(p: Pipeline) -> int:
    """Contacts in the sync folder, read over the pipeline's own API."""
    if p.api == "graph":
        graph = GraphClient(p)
        folder = wait_until(lambda: graph.folder_id(FOLDER), 60, what=f"folder {FOLDER}")
        return graph.count(folder)
    _, folder = p.outlook()
    return folder.all().count()


def requests_made(p: Pipeline) -> tuple[int, dict[str, int]]:
    """HTTP requests the emulator answered since its stats were reset, and its counts by
    operation (a ``$batch``'s parts are counted there under their own operations too; they are
    taken out of the HTTP total, which counts the ``$batch`` once)."""
    answer = p.emulator.admin("/_emulator/stats") or {}
    by_operation = dict(answer.get("requests", {}))
    return sum(by_operation.values()) - int(answer.get("graph_batch_parts", 0)), by_operation


def _producer_started_at(p: Pipeline) -> float:
    """When the producer's loop began (its log line), as a POSIX timestamp."""
    from datetime import datetime

    line = wait_until(lambda: next((ln for ln in p.log("producer").splitlines()
                                    if "producer.started" in ln), None), 60, what="the producer")
    if line.lstrip().startswith("{"):           # JSON logs (the log stream is not a terminal)
        stamp = json.loads(line)["timestamp"]
    else:
        stamp = line.split()[0]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def pipeline_initial_sync(tmp: Path, n: int, workers: int, api: str = "ews") -> tuple:
    """The baseline first (no crmsync process running yet), then the pipeline on the same
    emulator: seconds from the producer's start to the last link committed (the sync itself,
    without the interpreter start-up), the same until every echo settled, HTTP requests made
    (and counts by operation), CPU seconds of the workers and the emulator until the last link."""
    p = Pipeline(tmp, "sqlite", worker_concurrency=workers, batch_size=500, api=api)
    try:
        return _measure(p, n, api)
    except BaseException:
        p.close()           # its processes run in sessions of their own
        raise


def _measure(p: Pipeline, n: int, api: str) -> tuple:
    rows = seed_accounts(p, n)
    bulk = baseline_graph_batch(p, rows) if api == "graph" else baseline_bulk_create(p, rows)
    worker = p.start_worker().pid
    wait_until(lambda: "ready" in p.log("worker"), 60, what="the worker")
    p.emulator.reset_stats()
    cpu = cpu_seconds(worker) + cpu_seconds(p.emulator.proc.pid)
    p.start_producer()
    wait_until(lambda: p.state("SELECT count(*) AS n FROM links WHERE item_id IS NOT NULL")[0]["n"] >= n,
               timeout=max(600, n), interval=0.2, what=f"{n} links")
    cpu = cpu_seconds(worker) + cpu_seconds(p.emulator.proc.pid) - cpu
    _, by_operation = requests_made(p)
    started = _producer_started_at(p)
    last_link = p.state("SELECT max(synced_at) AS t FROM links")[0]["t"]
    synced = _timestamp(last_link) - started
    p.settle(timeout=max(600, n))
    settled = _timestamp(p.state("SELECT max(applied_at) AS t FROM events")[0]["t"]) - started
    requests, _ = requests_made(p)
    assert synced_count(p) == n, "every account must arrive exactly once"
    return synced, settled, requests, p, bulk, cpu, by_operation


def shipped_defaults_run(tmp: Path, n: int, api: str = "ews") -> float:
    """What a user sees: ``crmsync run`` started with the shipped defaults (no batch size, poll
    interval or concurrency in the config), seconds from starting the command, interpreter
    start-up and worker warm-up included, to the last link committed."""
    p = Pipeline(tmp, "sqlite", worker_concurrency=None, poll_interval_s=None, batch_size=None, api=api)
    try:
        seed_accounts(p, n)
        started = time.perf_counter()
        p.start("run", "run")
        wait_until(lambda: p.state("SELECT count(*) AS n FROM links WHERE item_id IS NOT NULL")[0]["n"] >= n,
                   timeout=max(600, n), interval=0.2, what=f"{n} links (crmsync run, shipped defaults)")
        elapsed = time.perf_counter() - started
        assert synced_count(p) == n, "every account must arrive exactly once"
        return elapsed
    finally:
        p.close()


def _timestamp(value) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="accounts (repeatable; default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker concurrency (default 2)")
    parser.add_argument("--api", choices=("ews", "graph"), default="ews",
                        help="the Exchange API of the pipeline and the baseline (default ews)")
    parser.add_argument("--skip-defaults-run", action="store_true",
                        help="do not time `crmsync run` with the shipped defaults (4 worker processes)")
    parser.add_argument("--keep-logs", action="store_true", help="print the tail of the process logs")
    args = parser.parse_args(argv)
    sizes = args.n or [1000]
    console = Console()
    api = args.api
    base = "$batch creates" if api == "graph" else "bulk_create"
    baseline = "plain httpx $batch creates (Graph)" if api == "graph" else "plain exchangelib bulk_create"
    table = Table(title=f"initial sync through the pipeline vs {baseline}")
    for col in ("N", "pipeline: all linked (s)", "pipeline: settled (s)", f"{base} (s)",
                "ratio (linked / bulk)", f"{api.upper()} HTTP requests per contact", "CPU s: pipeline / bulk",
                f"within {TARGET_RATIO}x", "crmsync run, defaults (s)", f"its ratio (<= {TARGET_USER_RATIO}x)"):
        table.add_column(col, justify="right")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-{n}-") as tmp:
            load = os.getloadavg()[0]
            synced, settled, requests, p, (bulk, bulk_cpu), cpu, by_operation = pipeline_initial_sync(
                Path(tmp), n, args.workers, api)
            try:
                if args.keep_logs:
                    for name in ("producer", "worker"):
                        console.print(f"--- {name} log (tail)")
                        console.print("\n".join(p.log(name).splitlines()[-25:]), markup=False)
            finally:
                p.close()
        ratio = synced / bulk
        console.print(f"N={n}, api {api}: pipeline {synced:.1f}s (settled {settled:.1f}s), {base} {bulk:.1f}s, "
                      f"ratio {ratio:.2f}, {requests / n:.2f} {api.upper()} HTTP requests per contact "
                      f"({', '.join(f'{op} {k}' for op, k in sorted(by_operation.items()))} until all linked"
                      + ("; a $batch's parts also count under their own operations" if api == "graph" else "")
                      + f"), CPU s pipeline {cpu:.1f} (workers + emulator) / {base} {bulk_cpu:.1f} "
                      f"(client + emulator), load average at the start {load:.2f}", markup=False)
        user_text = ratio_text = "skipped"
        if not args.skip_defaults_run:
            with tempfile.TemporaryDirectory(prefix=f"bench-run-{n}-") as tmp:
                try:
                    user = shipped_defaults_run(Path(tmp), n, api)
                except AssertionError as exc:
                    user_text, ratio_text = "did not finish", "-"
                    console.print(f"`crmsync run` with the shipped defaults did not finish: {exc}", markup=False)
                else:
                    user_text, ratio_text = f"{user:.1f}", f"{user / bulk:.2f}"
                    console.print(f"`crmsync run` with the shipped defaults, from the command's start: {user:.1f}s, "
                                  f"ratio {user / bulk:.2f}", markup=False)
        table.add_row(str(n), f"{synced:.1f}", f"{settled:.1f}", f"{bulk:.1f}", f"{ratio:.2f}",
                      f"{requests / n:.2f}", f"{cpu:.1f} / {bulk_cpu:.1f}", "yes" if ratio <= TARGET_RATIO else "NO",
                      user_text, ratio_text)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
