"""Shared fixtures for the EWS emulator tests (also used by the sync/notification tests).

The emulator runs for real on a free port (in a background thread of the test process, or as a
subprocess with ``spawn_emulator``); tests talk to it only through exchangelib over HTTP and plain
HTTP for the admin API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from exchangelib import DELEGATE, IMPERSONATION, Account, Configuration, Credentials
from exchangelib.protocol import FailFast
from exchangelib.transport import BASIC, NOAUTH

from ews_emulator import build_app

USERS = {
    "alice@example.com": "secret1",
    "bob@example.com": "secret2",
    "svc@example.com": "svcpass",
}
IMPERSONATORS = ["svc@example.com"]
DELEGATES = ["alice@example.com:bob@example.com"]   # bob may act on alice's mailbox


@dataclass
class RunningEmulator:
    """A started emulator: its endpoint, admin URL and how to stop or restart it."""

    data_dir: Path
    kwargs: dict = field(default_factory=dict)
    app: object = None

    @property
    def url(self) -> str:
        return self.app.url

    @property
    def port(self) -> int:
        return self.app.port

    @property
    def admin(self) -> str:
        return self.app.url.rsplit("/EWS/", 1)[0] + "/_emulator"

    def start(self) -> "RunningEmulator":
        self.app = build_app(self.data_dir, **self.kwargs)
        self.app.start()
        return self

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()

    def restart(self) -> "RunningEmulator":
        """Stop, then start a new server on the same data directory (new port)."""
        self.stop()
        return self.start()


def default_kwargs(**overrides) -> dict:
    kw = dict(users=[f"{a}:{p}" for a, p in USERS.items()], impersonators=IMPERSONATORS,
              delegates=DELEGATES, port=0)
    kw.update(overrides)
    return kw


@pytest.fixture
def start_emulator(tmp_path: Path):
    """Factory: start_emulator(**build_app kwargs) -> RunningEmulator; all are stopped at teardown."""
    started: list[RunningEmulator] = []

    def start(data_dir: Path | None = None, **overrides) -> RunningEmulator:
        emu = RunningEmulator(data_dir or tmp_path / f"emu{len(started)}", default_kwargs(**overrides))
        started.append(emu.start())
        return emu

    yield start
    for emu in started:
        emu.stop()
    from exchangelib import close_connections

    close_connections()


@pytest.fixture
def emulator(start_emulator) -> RunningEmulator:
    """An emulator with alice, bob (delegate of alice) and svc (impersonator)."""
    return start_emulator()


def make_account(emu: RunningEmulator, user: str | None = "alice@example.com", mailbox: str | None = None,
                 access_type: str = DELEGATE, password: str | None = None, retry_policy=None,
                 auth_type: str = BASIC) -> Account:
    """An exchangelib Account on ``mailbox`` (default: the user's own) as ``user``; the version is
    probed from the server (version=None). ``auth_type=NOAUTH`` with user None for --no-auth."""
    mailbox = mailbox or user
    credentials = None
    if auth_type != NOAUTH:
        credentials = Credentials(user, password if password is not None else USERS[user])
    config = Configuration(service_endpoint=emu.url, credentials=credentials, auth_type=auth_type,
                           version=None, retry_policy=retry_policy or FailFast())
    return Account(primary_smtp_address=mailbox, config=config, autodiscover=False, access_type=access_type)


@pytest.fixture
def account(emulator) -> Account:
    """alice's own account, Basic auth."""
    return make_account(emulator)


def admin_call(emu: RunningEmulator, method: str, path: str, payload: dict | None = None) -> dict:
    """Call the loopback admin API (e.g. admin_call(emu, "POST", "faults", {...}))."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(f"{emu.admin}/{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


@dataclass
class EmulatorProcess:
    """An emulator started as a subprocess (python -m ews_emulator), e.g. to measure its CPU."""

    proc: subprocess.Popen
    url: str

    @property
    def admin(self) -> str:
        return self.url.rsplit("/EWS/", 1)[0] + "/_emulator"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_emulator(data_dir: Path, extra_args: list[str] | None = None) -> EmulatorProcess:
    """Start ``python -m ews_emulator`` on a free port with the standard users; the caller stops
    it with ``.stop()`` (it kills only this process, by its own pid)."""
    args = [sys.executable, "-m", "ews_emulator", "--host", "127.0.0.1", "--port", "0",
            "--data", str(data_dir)]
    for a, p in USERS.items():
        args += ["--user", f"{a}:{p}"]
    for a in IMPERSONATORS:
        args += ["--impersonator", a]
    for d in DELEGATES:
        args += ["--delegate", d]
    args += extra_args or []
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    match = re.search(r"(https?://\S+/EWS/Exchange\.asmx)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r} {proc.stderr.read()}")
    return EmulatorProcess(proc=proc, url=match.group(1))


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """The emulator as a subprocess, stopped (by pid) at teardown."""
    ep = spawn_emulator(tmp_path / "emu-proc")
    yield ep
    ep.stop()


__all__ = ["USERS", "IMPERSONATORS", "DELEGATES", "RunningEmulator", "make_account", "admin_call",
           "spawn_emulator", "EmulatorProcess", "DELEGATE", "IMPERSONATION", "NOAUTH"]
