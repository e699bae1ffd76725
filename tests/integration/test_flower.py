"""``crmsync flower`` over HTTP: it refuses to start without credentials, and once started with
them it answers 401 without basic auth and 200 with it, and shows the depth of each of
crmsync's queues (``/api/queues/length`` and the Broker page). Real Flower on crmsync's Celery
app, a private redis-server as the broker; one Flower process serves the module's HTTP tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crmsync.celery_settings import REDRIVE_TASK
from crmsync.config import load_settings
from schemas.events import APPLY_EVENTS_TASK, MAINTENANCE, TO_CRM, TO_EXCHANGE, queue_name
from tests.support.emulator_proc import free_port
from tests.support.pipeline import wait_until

USER, PASSWORD = "ops", "flower-Secret-91"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Path:
    tmp = tmp_path_factory.mktemp("flower")
    path = tmp / "crmsync.toml"
    path.write_text(f'[broker]\nurl = "{redis_server.url(redis_server.new_database())}"\n'
                    f'[state]\nurl = "sqlite:///{tmp / "state.db"}"\n')
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CRMSYNC_FLOWER_USER", "CRMSYNC_FLOWER_PASSWORD", "FLOWER_BASIC_AUTH", "CRMSYNC_CONFIG")}
    return {**env, **extra}


def _run(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), "flower", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_refuses_to_start_without_credentials(config):
    done = _run(config, "--port", str(free_port()), env=_env())
    assert done.returncode == 2
    assert "CRMSYNC_FLOWER_USER and CRMSYNC_FLOWER_PASSWORD" in " ".join(done.stderr.split())


def test_insecure_no_auth_only_on_loopback(config):
    done = _run(config, "--insecure-no-auth", "--address", "0.0.0.0", "--port", str(free_port()), env=_env())
    assert done.returncode == 2
    assert "only allowed on a loopback address" in " ".join(done.stderr.split())


@pytest.fixture(scope="module")
def flower_url(config: Path) -> Iterator[str]:
    """One Flower process, started with credentials, for the module's HTTP tests; its log must
    never hold the password."""
    port = free_port()
    log_path = config.parent / "flower.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "--config", str(config), "flower", "--port", str(port)],
        env=_env(CRMSYNC_FLOWER_USER=USER, CRMSYNC_FLOWER_PASSWORD=PASSWORD), stdout=log, stderr=log,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def listens() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                httpx.get(url, timeout=2)
            except httpx.TransportError:
                return False
            return True
        wait_until(listens, 60, what="Flower to listen")
        yield url
    finally:
        stopping = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stopped_in = time.monotonic() - stopping
        log.close()
    assert PASSWORD not in log_path.read_text()
    # (its inspector's threads once hung on crmsync's 4-connection broker pool: 20 s, then SIGKILL)
    assert stopped_in < 10, f"Flower took {stopped_in:.1f} s to stop after SIGTERM"


def test_answers_401_without_auth_and_200_with_it(flower_url):
    assert httpx.get(flower_url, timeout=5).status_code == 401
    assert httpx.get(flower_url, auth=(USER, "wrong"), timeout=5).status_code == 401
    ok = httpx.get(flower_url, auth=(USER, PASSWORD), timeout=5)
    assert ok.status_code == 200
    assert "Flower" in ok.text
    workers = httpx.get(f"{flower_url}api/workers", auth=(USER, PASSWORD), timeout=10)
    assert workers.status_code == 200
    assert httpx.get(f"{flower_url}api/queues/length", timeout=5).status_code == 401


def test_shows_the_depth_of_each_crmsync_queue(config, flower_url):
    """No worker is running: the messages wait in Redis, and Flower shows every queue's depth
    (to_exchange, to_crm and maintenance), not only Celery's default queue."""
    from workers.celery_app import create_app

    app = create_app(load_settings(str(config), env={}))
    waiting = {queue_name(TO_EXCHANGE): 1, queue_name(TO_CRM): 2, queue_name(MAINTENANCE): 3}
    for _ in range(waiting[queue_name(TO_EXCHANGE)]):
        app.send_task(APPLY_EVENTS_TASK, args=[[1]], queue=queue_name(TO_EXCHANGE))
    for _ in range(waiting[queue_name(TO_CRM)]):
        app.send_task(APPLY_EVENTS_TASK, args=[[2]], queue=queue_name(TO_CRM))
    for _ in range(waiting[queue_name(MAINTENANCE)]):
        app.send_task(REDRIVE_TASK)     # routed to the maintenance queue by crmsync's settings

    seen: list[dict[str, int]] = []

    def shows_them() -> bool:
        answer = httpx.get(f"{flower_url}api/queues/length", auth=(USER, PASSWORD), timeout=10)
        assert answer.status_code == 200, answer.text
        seen.append({q["name"]: q["messages"] for q in answer.json()["active_queues"]})
        return seen[-1] == waiting

    try:
        wait_until(shows_them, 30, interval=0.5, what=f"Flower to show {waiting}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it showed {seen[-1:]}") from None
    page = httpx.get(f"{flower_url}broker", auth=(USER, PASSWORD), timeout=10)
    assert page.status_code == 200
    for name in waiting:
        assert name in page.text
