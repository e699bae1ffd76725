"""``crmsync flower`` over HTTP: it refuses to start without credentials, and once started with
them it answers 401 without basic auth and 200 with it. Real Flower on crmsync's Celery app,
a private redis-server as the broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.emulator_proc import free_port
from tests.support.pipeline import wait_until

USER, PASSWORD = "ops", "flower-Secret-91"


@pytest.fixture
def config(tmp_path: Path, redis_server) -> Path:
    path = tmp_path / "crmsync.toml"
    path.write_text(f'[broker]\nurl = "{redis_server.url(redis_server.new_database())}"\n'
                    f'[state]\nurl = "sqlite:///{tmp_path / "state.db"}"\n')
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


def test_answers_401_without_auth_and_200_with_it(config, tmp_path):
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "crmsync", "--config", str(config), "flower", "--port", str(port)],
        env=_env(CRMSYNC_FLOWER_USER=USER, CRMSYNC_FLOWER_PASSWORD=PASSWORD), stdout=log, stderr=log,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def answers() -> httpx.Response | None:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                return httpx.get(url, timeout=2)
            except httpx.TransportError:
                return None
        first = wait_until(answers, 60, what="Flower to listen")
        assert first.status_code == 401
        assert httpx.get(url, auth=(USER, "wrong"), timeout=5).status_code == 401
        ok = httpx.get(url, auth=(USER, PASSWORD), timeout=5)
        assert ok.status_code == 200
        assert "Flower" in ok.text
        workers = httpx.get(f"{url}api/workers", auth=(USER, PASSWORD), timeout=10)
        assert workers.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    assert PASSWORD not in (tmp_path / "flower.log").read_text()
