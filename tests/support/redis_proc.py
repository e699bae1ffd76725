"""A private redis-server for tests: a free port, a temporary directory, no persistence.

    server = start_redis(tmp_path / "redis")   # waits until it answers PING
    server.url(3)                               # redis://127.0.0.1:PORT/3
    server.new_database()                       # a database number no one of this server used yet
    server.stop()                               # SHUTDOWN NOSAVE, then wait for its own pid
    server.start()                              # again, same port, empty (nothing was saved)

Tests never use the machine's own Redis server: every test that needs a broker gets one
of these (tests/conftest.py has the session's), so a test can only flush or stop a server it
started. The binary is ``redis-server`` on PATH; without it :class:`RedisServerMissing` says
how to install it.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.emulator_proc import free_port

INSTALL_HINT = ("redis-server is not on PATH; the tests start private redis-servers of their own "
                "(they never use the machine's Redis). Install the binary: "
                "apt-get install redis-server (or your system's redis package)")
DATABASES = 256   # one server per session hands out a fresh database number per pipeline / test


class RedisServerMissing(RuntimeError):
    """No ``redis-server`` binary on PATH."""


def redis_server_binary() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisServerMissing(INSTALL_HINT)
    return exe


@dataclass
class RedisServer:
    """One ``redis-server`` child process bound to 127.0.0.1; restartable on the same port."""

    workdir: Path
    port: int
    proc: subprocess.Popen | None = None
    start_timeout: float = 20.0
    _next_db: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def command(self) -> list[str]:
        return [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--databases", str(DATABASES), "--dir", str(self.workdir),
                "--logfile", str(self.log_path)]

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def new_database(self) -> int:
        """A database number (1..DATABASES-1) not handed out before: empty, and nobody else's."""
        db = next(self._next_db)
        if db >= DATABASES:
            raise RuntimeError(f"redis-server on port {self.port}: all {DATABASES} databases handed out")
        return db

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _pings(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def start(self) -> RedisServer:
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while not self._pings():
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"redis-server exited with {code} on start (port {self.port}):\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within "
                                   f"{self.start_timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN NOSAVE, then wait for our own pid; SIGTERM / SIGKILL that pid if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # No retries: the server closes the connection as it shuts down, and redis-py's default
        # retries (with back-off) would reconnect to a port that is gone for ~4 s per server.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)
        client.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_redis(workdir: str | Path, attempts: int = 3) -> RedisServer:
    """A new redis-server on a free port, answering PING.

    Another process may take the free port before redis-server binds it; then a new port is
    tried (``attempts`` in all). Raises :class:`RedisServerMissing` when there is no binary.
    """
    redis_server_binary()
    last: RuntimeError | None = None
    for _ in range(attempts):
        server = RedisServer(workdir=Path(workdir), port=free_port())
        try:
            return server.start()
        except RuntimeError as exc:
            last = exc
    assert last is not None
    raise last


@contextlib.contextmanager
def running_redis(workdir: str | Path) -> Iterator[RedisServer]:
    """``start_redis`` for the length of a with-block; always stopped by its own pid."""
    server = start_redis(workdir)
    try:
        yield server
    finally:
        server.stop()
