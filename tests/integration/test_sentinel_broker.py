"""The broker behind Redis Sentinel: a real redis-server master, a real ``redis-server --sentinel``
watching it, and the whole pipeline (producer, Celery worker, ``status``, ``doctor``) given only
the sentinel's address (``sentinel://...`` + ``[broker] sentinel_master``): nothing in the config
names the master's port, so every message and every Redis read found the master through the
sentinel."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.emulator_proc import free_port
from tests.support.pipeline import Pipeline, wait_until
from tests.support.redis_proc import RedisServer, redis_server_binary, start_redis

MASTER = "crmsync-master"


class SentinelProc:
    """One ``redis-server --sentinel`` on a free port, monitoring ``master`` (quorum 1)."""

    def __init__(self, workdir: Path, master: RedisServer) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        conf = workdir / "sentinel.conf"   # sentinel rewrites its config file: it must be writable
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
                        f"logfile {workdir / 'sentinel.log'}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
                        f"sentinel down-after-milliseconds {MASTER} 60000\n")
        self.proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            def knows_master() -> bool:
                assert self.proc.poll() is None, f"sentinel exited: {self.log_tail()}"
                try:
                    return client.sentinel_get_master_addr_by_name(MASTER) is not None
                except redis.RedisError:
                    return False
            wait_until(knows_master, 20, what="the sentinel answering with the master's address")
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def log_tail(self) -> str:
        try:
            return (self.workdir / "sentinel.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory) -> Iterator[tuple[Pipeline, RedisServer, SentinelProc]]:
    tmp = tmp_path_factory.mktemp("sentinel")
    master = start_redis(tmp / "master")
    sentinel = None
    pipeline = None
    try:
        sentinel = SentinelProc(tmp / "sentinel", master)
        db = master.new_database()
        pipeline = Pipeline(tmp / "pipeline", "sqlite", broker_url=f"sentinel://127.0.0.1:{sentinel.port}/{db}",
                            broker_config=f'sentinel_master = "{MASTER}"')
        pipeline.start_worker()
        pipeline.start_producer()
        pipeline.outlook()
        pipeline.settle()
        yield pipeline, master, sentinel
    finally:
        if pipeline is not None:
            pipeline.close()
        if sentinel is not None:
            sentinel.stop()
        master.stop()


def _by_email(pipeline: Pipeline, email: str) -> list:
    return [c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))]


def test_a_crm_change_syncs_over_the_sentinel_broker(sentinel_stack) -> None:
    pipeline, master, _ = sentinel_stack
    email = f"ada.{uuid.uuid4().hex[:6]}@sentinel.example"
    pipeline.crm.execute("INSERT INTO accounts (account_no, is_active, company_name, first_name, last_name, email) "
                         "VALUES (:no, 1, 'Sentinel Ltd', 'Ada', 'Lovelace', :email)",
                         no=f"S-{uuid.uuid4().hex[:8]}", email=email)
    found = wait_until(lambda: _by_email(pipeline, email), 60, what="the contact in Exchange")
    assert found[0].company_name == "Sentinel Ltd"
    pipeline.settle()
    applied = pipeline.state("SELECT count(*) AS n FROM events WHERE status = 'applied'")[0]["n"]
    assert applied >= 1
    # the messages went through the master the sentinel named: Celery's bindings live in its database
    db = int(pipeline.broker_url.rsplit("/", 1)[1])
    assert master.client(db).keys("_kombu.binding.*"), "no Celery binding in the master's database"


def test_the_redrive_knows_the_master_it_reaches_through_the_sentinel(sentinel_stack) -> None:
    """The broker's identity (the master's run_id: a new one after a failover or a restart
    without data tells beat's re-drive to re-send what was not applied)."""
    from crmsync.config import load_settings
    from producers.publisher import CeleryPublisher

    pipeline, master, _ = sentinel_stack
    settings = load_settings(str(pipeline.config_path), env=pipeline.env)
    identity = CeleryPublisher.from_settings(settings).broker_identity()
    assert identity is not None
    assert identity == master.client().info("server")["run_id"]


def test_status_reads_the_queues_through_the_sentinel(sentinel_stack) -> None:
    pipeline, _, _ = sentinel_stack
    done = pipeline.cli("status")
    assert "broker queues: unknown" not in done.stdout, done.stdout
    assert f"{pipeline.queue}.to_exchange" in done.stdout, done.stdout


def test_doctor_asks_the_sentinels_and_names_the_master(sentinel_stack) -> None:
    pipeline, master, sentinel = sentinel_stack
    found = {row["check"]: row for row in json.loads(pipeline.cli("doctor", "--format", "json", check=False).stdout)}
    assert found["redis.sentinel"]["status"] == "OK", found["redis.sentinel"]
    assert f"master '{MASTER}' at 127.0.0.1:{master.port}" in found["redis.sentinel"]["detail"]
    assert found["redis"]["status"] == "OK", found["redis"]
    assert found["celery.workers"]["status"] == "OK", found["celery.workers"]
    assert pipeline.queue in found["celery.workers"]["detail"]


def test_doctor_fails_on_a_master_name_the_sentinels_do_not_know(sentinel_stack) -> None:
    pipeline, _, _ = sentinel_stack
    wrong = pipeline.tmp / "wrong-master.toml"
    wrong.write_text(pipeline.config_path.read_text().replace(f'sentinel_master = "{MASTER}"',
                                                               'sentinel_master = "no-such-master"'))
    done = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(wrong), "doctor", "--format", "json"],
                          env=pipeline.env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    found = {row["check"]: row for row in json.loads(done.stdout)}
    assert found["redis.sentinel"]["status"] == "FAIL"
    assert "no master named 'no-such-master'" in found["redis.sentinel"]["detail"]
    assert "broker.sentinel_master" in found["redis.sentinel"]["fix"]


def test_the_graph_request_limiter_counts_in_the_master_found_through_the_sentinel(sentinel_stack) -> None:
    from crmsync.adapters.exchange.graph.limiter import RedisSlots

    pipeline, master, _ = sentinel_stack
    db = int(pipeline.broker_url.rsplit("/", 1)[1])
    slots = RedisSlots(pipeline.broker_url, app="sentinel-test", limit=2, master=MASTER)
    with slots.hold("ada@sentinel.example"):
        assert master.client(db).zcard("crmsync:graph:sentinel-test:ada@sentinel.example:slots") == 1
    assert master.client(db).zcard("crmsync:graph:sentinel-test:ada@sentinel.example:slots") == 0
