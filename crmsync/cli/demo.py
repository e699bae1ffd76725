"""``crmsync demo``: the whole pipeline on one machine, with nothing to set up.

An Exchange emulator on a free port, a seeded SQLite CRM, the producers in this process and a
real Celery worker in a child process. It uses Redis when the configured broker answers and
otherwise kombu's SQLAlchemy transport on a SQLite file, so it runs where no Redis is installed.

With ``api="graph"`` crmsync reaches the mailbox through the emulator's Microsoft Graph front
door instead: over HTTPS with a throwaway CA made in the demo's directory (``tls/``, trusted
through ``SSL_CERT_FILE``), as an app registered in the emulator with a secret made at start
that only the environment of the demo and its worker holds.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crmsync.adapters.broker import redis_answers
from crmsync.config import load_settings, mask_url

DEMO_MAILBOX = "demo@example.com"
DEMO_FOLDER = "CRM Accounts"
DEMO_QUEUE = "crmsync.cli.demo"
DEMO_TENANT = "demo.onmicrosoft.com"        # api="graph": the app registered in the emulator
DEMO_APP = "crmsync-demo"
DEMO_SECRET_ENV = "CRMSYNC_DEMO_GRAPH_SECRET"


def _graph_config(emulator) -> str:
    base = emulator.url.split("/EWS/", 1)[0]
    return f"""api = "graph"
tenant_id = "{DEMO_TENANT}"
client_id = "{DEMO_APP}"
client_secret_env = "{DEMO_SECRET_ENV}"
authority = "{base}"
graph_url = "{emulator.graph_url}"
"""


def _config_text(directory: Path, endpoint: str, broker_url: str, graph: str = "") -> str:
    return f"""# Written by `crmsync demo`. Use it with: crmsync --config {directory / 'crmsync.toml'} status
[crm]
url = "sqlite:///{directory / 'crm.db'}"

[state]
url = "sqlite:///{directory / 'state.db'}"

[broker]
url = "{broker_url}"

[exchange]
endpoint = "{endpoint}"
auth = "noauth"
access = "delegate"
max_wait_s = 5
{graph}
[[mailbox]]
address = "{DEMO_MAILBOX}"
folder = "{DEMO_FOLDER}"
# the demo seeds the folder and syncs it at once, without `crmsync sync --approve-plan`
first_sync = "auto"

[sync]
poll_interval_s = 1
redrive_after_s = 30
retry_backoff_max_s = 10

[worker]
concurrency = 2
queue_prefix = "{DEMO_QUEUE}"

[log]
level = "WARNING"
"""


def seed_crm(crm_db: Path) -> tuple[int, int]:
    """Create the reference schema and insert the demo accounts and their contacts."""
    from crmsync.adapters.database import init_crm, make_engine
    from crmsync.cli.demo_data import demo_accounts, demo_secondary_contacts

    engine = make_engine(f"sqlite:///{crm_db}")
    init_crm(engine)
    engine.dispose()
    accounts = demo_accounts(30)
    contacts = demo_secondary_contacts(accounts)
    now = datetime.now(UTC).isoformat(sep=" ")
    with sqlite3.connect(crm_db) as db:
        for row in accounts:
            cols = [c for c in row if c != "id"] + ["updated_at"]
            db.execute(f"INSERT INTO accounts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       [row[c] for c in cols[:-1]] + [now])
        ids = dict(db.execute("SELECT account_no, id FROM accounts"))
        for row in contacts:
            values = {k: v for k, v in row.items() if k != "account_no"}
            values["account_id"] = ids[row["account_no"]]
            values["updated_at"] = now
            db.execute(f"INSERT INTO contacts ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       list(values.values()))
    return len(accounts), len(contacts)


def _choose_broker(directory: Path, console: Console) -> str:
    configured = load_settings().broker.url
    if redis_answers(configured):
        console.print(f"broker: Redis at {mask_url(configured)} (queues {DEMO_QUEUE}.*)")
        return configured
    url = f"sqla+sqlite:///{directory / 'broker.db'}"
    console.print(f"[yellow]broker: Redis at {mask_url(configured)} does not answer; using the "
                  f"embedded broker (kombu SQLAlchemy transport) at {directory / 'broker.db'}[/]")
    return url


def _remove_previous_demo(root: Path) -> None:
    """Delete what an earlier demo made in ``root`` and nothing else: ``--dir`` may name a
    directory that holds other files too."""
    for name in ("crm.db", "state.db", "broker.db", "exchange/mailboxes.sqlite3"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (root / f"{name}{suffix}").unlink(missing_ok=True)
    for name in ("crmsync.toml", "worker.log", "tls/ca.pem", "tls/cert.pem", "tls/key.pem"):
        (root / name).unlink(missing_ok=True)
    for name in ("exchange", "tls"):
        if (root / name).is_dir() and not any((root / name).iterdir()):
            (root / name).rmdir()


def _purge_queue(broker_url: str) -> None:
    """Drop messages a previous demo left in its own queue (they name events of old data)."""
    if broker_url.startswith("redis"):
        from crmsync.adapters.redis_client import redis_client
        from schemas.events import queue_names

        redis_client(broker_url, timeout_s=2, connect_timeout_s=None).delete(*queue_names(DEMO_QUEUE))


def run_demo(directory: str, *, duration: float = 0, fresh: bool = True,
             console: Console | None = None, api: str = "ews") -> None:
    from crmsync.adapters.database import init_state
    from crmsync.adapters.state.status import event_totals
    from crmsync.bootstrap import Container
    from crmsync.cli.demo_data import demo_exchange_contacts
    from crmsync.cli.processes import build_producer_loop, spawn_worker, stop_process
    from crmsync.logging_setup import configure_logging
    from ews_emulator import build_app

    configure_logging("WARNING")   # the demo's own lines are the show; the worker logs to a file
    console = console or Console()
    root = Path(directory).resolve()
    if fresh and root.exists():
        _remove_previous_demo(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    if api not in ("ews", "graph"):
        raise ValueError(f"demo --api {api!r}: expected 'ews' or 'graph'")
    tls: dict[str, str] = {}
    graph_apps: list[str] = []
    if api == "graph":
        from crmsync.cli.demo_tls import make_demo_ca

        ca, cert, key = make_demo_ca(root / "tls")
        tls = {"tls_cert": str(cert), "tls_key": str(key)}
        # The app's secret: made now, held by this process's environment and the worker's, and
        # never written or printed. The CA: trusted by both through SSL_CERT_FILE.
        os.environ[DEMO_SECRET_ENV] = secrets.token_urlsafe(24)
        os.environ["SSL_CERT_FILE"] = str(ca)
        graph_apps = [f"{DEMO_TENANT}:{DEMO_APP}:{os.environ[DEMO_SECRET_ENV]}"]
    emulator = build_app(root / "exchange", no_auth=True, mailboxes=[DEMO_MAILBOX], port=0,
                         graph_apps=graph_apps, **tls)
    emulator.start()
    if api == "graph":
        console.print(f"Exchange emulator, Microsoft Graph front door: {emulator.graph_url} (mailbox "
                      f"{DEMO_MAILBOX}; crmsync signs in as app {DEMO_APP} of tenant {DEMO_TENANT}; "
                      f"TLS from the demo's own CA {root / 'tls' / 'ca.pem'})")
    else:
        console.print(f"Exchange emulator: {emulator.url} (mailbox {DEMO_MAILBOX}, no auth)")

    broker_url = _choose_broker(root, console)
    # Environment values win over a config file: make the demo's choice the environment's
    # too, for this process and for the worker it starts.
    os.environ["CRMSYNC_BROKER_URL"] = broker_url
    config_path = root / "crmsync.toml"
    config_path.write_text(_config_text(root, emulator.url, broker_url, _graph_config(emulator) if api == "graph" else ""))
    settings = load_settings(str(config_path))
    container = Container(settings)
    _purge_queue(settings.broker.dsn())

    n_accounts, n_contacts = (0, 0)
    if fresh or not (root / "crm.db").exists():
        n_accounts, n_contacts = seed_crm(root / "crm.db")
    init_state(container.state_engine)
    console.print(f"CRM (SQLite): {root / 'crm.db'} — {n_accounts} accounts, {n_contacts} secondary contacts")

    n_exchange = 0
    if fresh and api == "graph":
        from crmsync.adapters.exchange.graph.seed import seed_contacts as seed_over_graph

        n_exchange = seed_over_graph(container.graph_client(), DEMO_MAILBOX, container.graph_folder(DEMO_MAILBOX),
                                     demo_exchange_contacts(10))
    elif fresh:
        from crmsync.adapters.exchange.ews.seed import seed_contacts

        account, folder = container.exchange_account(DEMO_MAILBOX)
        n_exchange = seed_contacts(folder, demo_exchange_contacts(10))
    if fresh:
        console.print(f"Exchange mailbox {DEMO_MAILBOX}, folder Contacts/{DEMO_FOLDER}: "
                      f"{n_exchange} contacts (one is private and stays out of the CRM)")

    log_path = root / "worker.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    worker = spawn_worker(str(config_path), ["--concurrency", "2", "-B"], stdout=log_file, stderr=log_file)
    loop = build_producer_loop(container)
    producer = threading.Thread(target=loop.run, name="producers", daemon=True)
    producer.start()
    console.print(f"worker: pid {worker.pid} (log {log_path}); producers running")

    expected = n_accounts + n_contacts + n_exchange
    _stop_on_signals()
    try:
        last_id = _initial_sync(container, expected, console, started, duration, worker)
        if api == "graph":
            exchange_hint = (f"{emulator.graph_url}/users/{DEMO_MAILBOX}/contactFolders (any HTTP client; "
                             f"the emulator runs without auth here, crmsync still signs in; "
                             f"trust {root / 'tls' / 'ca.pem'})")
        else:
            exchange_hint = (f"{emulator.url} (exchangelib, no auth, mailbox {DEMO_MAILBOX}, "
                             f"folder Contacts/{DEMO_FOLDER})")
        console.print(
            "\n[bold]Now edit either side and watch the change arrive on the other.[/]\n"
            f"  CRM:      sqlite3 {root / 'crm.db'} \"UPDATE accounts SET phone_business = "
            "'+1 212 555 0199' WHERE account_no = 'ACC-1001'\"\n"
            f"  Exchange: {exchange_hint}\n"
            f"  Status:   crmsync --config {config_path} status\n"
            "Ctrl-C stops the demo." + (f" (stopping by itself after {duration:.0f} s)" if duration else ""))
        _follow(container, last_id, console, started, duration, worker)
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        loop.stop.set()
        producer.join(timeout=10)
        stop_process(worker)
        log_file.close()
        emulator.stop()
        container.dispose()
        totals = event_totals(container.state_engine)
        console.print(f"demo stopped: {totals.get('applied', 0)} events applied, "
                      f"{totals.get('dead', 0)} dead letters. Files kept in {root}")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the demo cleanly, even when started with SIGINT ignored (a
    background job of a shell, some CI runners): Python then leaves SIGINT ignored."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):  # noqa: ANN001, ARG001 - a signal handler's signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _time_left(started: float, duration: float) -> bool:
    return not duration or time.monotonic() - started < duration


def _check_worker(worker) -> None:
    if worker.poll() is not None:
        raise RuntimeError(f"the worker exited with code {worker.returncode}; see worker.log")


def _initial_sync(container, expected: int, console: Console, started: float, duration: float,
                  worker) -> int:
    from crmsync.adapters.state.status import event_totals

    columns = (TextColumn("initial sync"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sync", total=max(expected, 1))
        while _time_left(started, duration):
            _check_worker(worker)
            totals = event_totals(container.state_engine)
            done = totals.get("applied", 0) + totals.get("dead", 0)
            total = max(expected, sum(totals.values()))
            progress.update(task, completed=done, total=total)
            if done >= total and done >= expected:
                break
            time.sleep(0.5)
    links = sum(1 for _ in container.store.links_for_mailbox(DEMO_MAILBOX))
    console.print(f"initial sync complete: {links} linked contacts in {DEMO_MAILBOX}")
    return event_totals(container.state_engine, max_id=True).get("max_id", 0)


def _follow(container, last_id: int, console: Console, started: float, duration: float, worker) -> None:
    """Print every event that finishes from now on (events finish out of order, so a window
    below the newest id is re-scanned and what was shown is remembered)."""
    from crmsync.adapters.state.status import applied_events_after

    floor = max(last_id - 500, 0)
    # Only the initial sync's events count as shown: an edit made at once may be applied before
    # this loop starts, and must still be printed.
    seen = {e["id"] for e in applied_events_after(container.state_engine, floor, limit=100_000)
            if e["id"] <= last_id}
    while _time_left(started, duration):
        _check_worker(worker)
        for event in applied_events_after(container.state_engine, floor, limit=100_000):
            if event["id"] in seen:
                continue
            seen.add(event["id"])
            console.print(_describe(event), markup=False, highlight=False,
                          style="dim" if event.get("outcome") in _QUIET else None)
        time.sleep(0.5)


_QUIET = {"noop", "done-already", "gone"}
_OUTCOMES = {
    "updated": "applied",
    "noop": "nothing to write (already in sync: an echo of crmsync's own write)",
    "created-exchange": "created in Exchange",
    "created-crm": "created a CRM account",
    "deleted-exchange": "moved the Exchange contact to Deleted Items",
    "deactivated-crm": "deactivated the CRM account (kept, is_active = false)",
    "deleted-crm": "deleted the CRM account (on_exchange_delete = \"delete\")",
    "unlinked": "unlinked",
    "private-skipped": "private contact: not read into the CRM",
    "gone": "nothing to do (gone, or private)",
}


def _describe(event: dict) -> str:
    direction = "CRM → Exchange" if event["source"] == "crm" else "Exchange → CRM"
    what = event["crm_key"] or f"item {str(event['item_id'])[:16]}…"
    if event["status"] == "dead":
        result = f"DEAD LETTER: {event['last_error']}"
    else:
        result = _OUTCOMES.get(event.get("outcome") or "", event.get("outcome") or "applied")
    return f"{datetime.now().strftime('%H:%M:%S')}  {direction}  {event['op']:<6} {what:<22} {result}"
