"""A whole crmsync deployment on this machine, from real parts, for e2e/reliability/bench.

The EWS emulator and the crmsync producer and worker run as child processes, Redis is a private
redis-server (tests pass a fresh database of the session's server as ``broker_url``; without one
the pipeline starts and stops a server of its own), the CRM is a SQLite file or a fresh
PostgreSQL database. Tests act like people: plain SQL on the CRM, exchangelib as the
mailbox owner in Outlook.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.support.emulator_proc import ca_signed_cert, start_emulator
from tests.support.redis_proc import RedisServer, start_redis

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MAILBOX = "alice@example.com"
MAILBOX_PASSWORD = "alice-pw"
SERVICE_USER = "svc@example.com"
SERVICE_PASSWORD = "svc-secret-pw"
FOLDER = "CRM Accounts"
GRAPH_TENANT = "contoso.onmicrosoft.com"   # api="graph": the app registered in the emulator
GRAPH_APP = "crmsync-e2e"
GRAPH_SECRET = "e2e-graph-secret-4b2c"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


class CrmDatabase:
    """A throwaway CRM database: a SQLite file or a new PostgreSQL database."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / 'crm.db'}"
            self.state_url = f"sqlite:///{tmp / 'state.db'}"
            self._pg_names: list[str] = []
        else:
            suffix = uuid.uuid4().hex[:10]
            self._pg_names = [f"crmsync_crm_{suffix}", f"crmsync_state_{suffix}"]
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in self._pg_names:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self._pg_names[0]}"
            self.state_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self._pg_names[1]}"
        self.engine = sa.create_engine(self.url)

    def execute(self, sql: str, **params: Any) -> None:
        """Plain SQL, as any other program writing to the CRM would."""
        if self.kind == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path, timeout=30) as db:
                db.execute(sql, params)
        else:
            with self.engine.begin() as conn:
                conn.execute(sa.text(sql), params)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def drop(self) -> None:
        self.engine.dispose()
        if self._pg_names:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in self._pg_names:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def _setting(key: str, value: object) -> str:
    """A config line, or none at all for ``None`` (crmsync's shipped default applies)."""
    return "" if value is None else f"{key} = {value}"


class Pipeline:
    def __init__(self, tmp: Path, crm_kind: str = "sqlite", *, worker_concurrency: int | None = 2,
                 poll_interval_s: float | None = 0.5, max_attempts: int = 8,
                 broker_url: str | None = None, batch_size: int | None = 200, api: str = "ews",
                 redrive_after_s: float = 10, exchange_timeout_s: float = 4,
                 exchange_max_wait_s: float = 2, lease_ttl_s: float = 20,
                 extra_users: dict[str, str] | None = None, emulator_args: tuple[str, ...] = (),
                 notifications: str | None = None, broker_config: str = "",
                 first_sync: str | None = "auto") -> None:
        """``first_sync``: the mailbox's ``[[mailbox]] first_sync``. "auto" by default here, because
        most tests seed alice's folder before the producer starts and test the sync, not the
        first-sync gate (the shipped default, "approve", would hold such a folder until
        `crmsync sync --approve-plan`); ``None`` writes no line, so the shipped default applies."""
        self.tmp = tmp
        self.api = api
        tmp.mkdir(parents=True, exist_ok=True)
        # A broker nobody else uses: the caller's (a fresh database of a private server) or a
        # redis-server of the pipeline's own. Nothing here flushes anything.
        self.own_redis: RedisServer | None = None
        if broker_url is None:
            self.own_redis = start_redis(tmp / "redis")
            broker_url = self.own_redis.url(0)
        try:
            self.broker_url = broker_url
            self.queue = f"crmsync.test.{uuid.uuid4().hex[:8]}"
            self.crm = CrmDatabase(crm_kind, tmp)
            extra_args = ["--impersonator", SERVICE_USER, *emulator_args]
            graph_env: dict[str, str] = {}
            if api == "graph":
                # Graph over HTTPS (msal insists), from a throwaway CA the crmsync processes trust
                # through SSL_CERT_FILE; the app may use every mailbox.
                ca, cert, key = ca_signed_cert(tmp / "tls")
                self.graph_ca = str(ca)
                extra_args += ["--tls-cert", str(cert), "--tls-key", str(key),
                               "--graph-app", f"{GRAPH_TENANT}:{GRAPH_APP}:{GRAPH_SECRET}"]
                graph_env = {"CRMSYNC_TEST_GRAPH_SECRET": GRAPH_SECRET, "SSL_CERT_FILE": str(ca)}
            self.emulator = start_emulator(
                tmp / "exchange", users={MAILBOX: MAILBOX_PASSWORD, SERVICE_USER: SERVICE_PASSWORD,
                                         **(extra_users or {})},
                extra_args=extra_args)
            graph_config = "" if api != "graph" else f"""api = "graph"
tenant_id = "{GRAPH_TENANT}"
client_id = "{GRAPH_APP}"
client_secret_env = "CRMSYNC_TEST_GRAPH_SECRET"
authority = "{self.emulator.base_url}"
graph_url = "{self.emulator.graph_base}"
"""
            self.config_path = tmp / "crmsync.toml"
            self.config_path.write_text(f"""
[crm]
url = "{self.crm.url}"
[state]
url = "{self.crm.state_url}"
[broker]
url = "{self.broker_url}"
{broker_config}
[exchange]
endpoint = "{self.emulator.endpoint}"
auth = "basic"
username = "{SERVICE_USER}"
password_env = "CRMSYNC_TEST_EXCHANGE_PASSWORD"
access = "impersonation"
max_wait_s = {exchange_max_wait_s}
timeout_s = {exchange_timeout_s}
{graph_config}[[mailbox]]
address = "{MAILBOX}"
folder = "{FOLDER}"
{_setting("first_sync", None if first_sync is None else f'"{first_sync}"')}
[sync]
{_setting("poll_interval_s", poll_interval_s)}
redrive_after_s = {redrive_after_s}
retry_backoff_max_s = 5
{"" if notifications is None else f'notifications = "{notifications}"'}
max_attempts = {max_attempts}
{_setting("batch_size", batch_size)}
lease_ttl_s = {lease_ttl_s}
[worker]
{_setting("concurrency", worker_concurrency)}
queue_prefix = "{self.queue}"
[log]
level = "INFO"
""")
            self.env = {**os.environ, "CRMSYNC_TEST_EXCHANGE_PASSWORD": SERVICE_PASSWORD,
                        "PYTHONUNBUFFERED": "1", **graph_env}
            self.env.pop("CRMSYNC_CONFIG", None)
            self.procs: dict[str, subprocess.Popen] = {}
            self._state_engine = sa.create_engine(self.crm.state_url)
            self._users: dict[str, Any] = {}   # user -> their exchangelib Account
            self.cli("init")
        except BaseException:
            if self.own_redis is not None:
                self.own_redis.stop()
            raise

    # processes -----------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "crmsync", "--config", str(self.config_path), *args]
        done = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"crmsync {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, "-m", "crmsync", "--config", str(self.config_path), *args]
        proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdout=log, stderr=log,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str = "worker", env: dict[str, str] | None = None,
                     *extra: str) -> subprocess.Popen:
        return self.start(name, "worker", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", *extra, env=env)

    def start_producer(self, env: dict[str, str] | None = None, beat: bool = True) -> subprocess.Popen:
        """The producer and (unless ``beat=False``) crmsync beat, whose re-drive the producer
        had built in before: a pipeline started this way behaves as it always did."""
        if beat:
            self.start_beat()
        return self.start("producer", "producer", env=env)

    def start_beat(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        """crmsync beat (re-drive, drift checks); one only: a running one is kept."""
        running = self.procs.get("beat")
        if running is not None and running.poll() is None:
            return running
        return self.start("beat", "beat", env=env)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.emulator.stop()
        self._state_engine.dispose()
        self.crm.drop()
        if self.own_redis is not None:
            self.own_redis.stop()

    # state ---------------------------------------------------------------------------------
    def state(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self._state_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    def unfinished_events(self) -> int:
        return self.state("SELECT count(*) AS n FROM events WHERE status NOT IN ('applied', 'dead')")[0]["n"]

    def dead_events(self) -> list[dict[str, Any]]:
        return self.state("SELECT * FROM events WHERE status = 'dead'")

    def settle(self, timeout: float = 60, quiet_s: float = 2.0) -> None:
        """Wait until every event is finished and no new one appeared for ``quiet_s``."""
        def quiet() -> bool:
            before = self.state("SELECT count(*) AS n FROM events")[0]["n"]
            if self.unfinished_events():
                return False
            time.sleep(quiet_s)
            after = self.state("SELECT count(*) AS n FROM events")[0]["n"]
            return before == after and not self.unfinished_events()
        wait_until(quiet, timeout, what="the pipeline to settle")

    # the mailbox owner's Outlook -------------------------------------------------------------
    def outlook_account(self):
        """An exchangelib Account as the mailbox owner (the user's Outlook)."""
        return self.user_account(MAILBOX, MAILBOX_PASSWORD)

    def user_account(self, user: str, password: str):
        """An exchangelib Account as ``user`` signed in as themselves (their own Outlook), one per
        user for the pipeline's life."""
        accounts = self._users
        if user not in accounts:
            from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials

            config = Configuration(service_endpoint=self.emulator.endpoint,
                                   credentials=Credentials(user, password), auth_type=BASIC)
            accounts[user] = Account(user, config=config, autodiscover=False, access_type=DELEGATE)
        return accounts[user]

    def outlook(self):
        """The owner's Account and the sync folder (created by crmsync)."""
        account = self.outlook_account()
        if getattr(self, "_folder", None) is None:
            def find():
                account.root.clear_cache()   # exchangelib caches the folder tree
                return next((f for f in account.contacts.children if f.name == FOLDER), None)
            self._folder = wait_until(find, 60, what=f"folder {FOLDER} (created by the producer)")
        return account, self._folder

    def contacts(self) -> list:
        _, folder = self.outlook()
        return list(folder.all())

    def ews_writes(self) -> int:
        stats = self.emulator.stats()
        return sum(stats.get(op, 0) for op in ("CreateItem", "UpdateItem", "DeleteItem", "MoveItem"))

    def crm_changelog_count(self) -> int:
        return self.crm.query("SELECT count(*) AS n FROM crm_changelog")[0]["n"]
