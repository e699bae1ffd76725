"""Shared fixtures for the EWS emulator tests (also used by the sync/notification tests).

The emulator runs for real on a free port as a subprocess (``python -m ews_emulator``), stopped
by its own pid; tests talk to it only through exchangelib over HTTP and plain
HTTP for the admin API.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from exchangelib import DELEGATE, IMPERSONATION, Account, Configuration, Credentials
from exchangelib.protocol import FailFast
from exchangelib.transport import BASIC, NOAUTH

from tests.support.emulator_proc import EmulatorProcess, free_port

USERS = {
    "alice@example.com": "secret1",
    "bob@example.com": "secret2",
    "svc@example.com": "svcpass",
}
IMPERSONATORS = ["svc@example.com"]
DELEGATES = ["alice@example.com:bob@example.com"]   # bob may act on alice's mailbox


class RunningEmulator(EmulatorProcess):
    """The project's emulator subprocess (tests/support), as these tests name it: ``url`` is
    the endpoint. Tests reach it over HTTP only; it is stopped by its own pid."""

    @property
    def url(self) -> str:
        return self.endpoint


def _emulator(data_dir: Path, **overrides) -> RunningEmulator:
    kw = default_kwargs(**overrides)
    extra: list[str] = []
    for flag, key in (("--impersonator", "impersonators"), ("--delegate", "delegates"),
                      ("--mailbox", "mailboxes"), ("--graph-app", "graph_apps"),
                      ("--graph-app-scope", "graph_app_scopes"), ("--graph-app-cert", "graph_app_certs")):
        for value in kw.get(key, ()):
            extra += [flag, value]
    for flag, key in (("--graph-token-lifetime", "graph_token_lifetime"),
                      ("--graph-mailbox-concurrency", "graph_mailbox_concurrency")):
        if kw.get(key) is not None:
            extra += [flag, str(kw[key])]
    if kw.get("no_auth"):
        extra.append("--no-auth")
    if kw.get("public_folders"):
        extra.append("--public-folders")
    if kw.get("tls_cert"):
        extra += ["--tls-cert", kw["tls_cert"], "--tls-key", kw["tls_key"]]
    users = dict(spec.split(":", 1) for spec in kw.get("users", ()))
    return RunningEmulator(data_dir=data_dir, port=kw.get("port") or free_port(), users=users,
                           extra_args=extra, host=kw.get("host", "127.0.0.1"))


def default_kwargs(**overrides) -> dict:
    kw = dict(users=[f"{a}:{p}" for a, p in USERS.items()], impersonators=IMPERSONATORS,
              delegates=DELEGATES, port=0)
    kw.update(overrides)
    return kw


@pytest.fixture
def start_emulator(tmp_path: Path):
    """Factory: start_emulator(users=[...], no_auth=True, mailboxes=[...], tls_cert=..., tls_key=...,
    host=..., graph_apps=[...], graph_app_scopes=[...], graph_app_certs=[...], graph_token_lifetime=S,
    graph_mailbox_concurrency=N, public_folders=True) -> RunningEmulator (defaults: alice, bob, svc impersonator, bob delegate of alice).
    All are stopped at teardown."""
    started: list[RunningEmulator] = []

    def start(data_dir: Path | None = None, **overrides) -> RunningEmulator:
        emu = _emulator(data_dir or tmp_path / f"emu{len(started)}", **overrides)
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
                 auth_type: str = BASIC, max_connections: int | None = None) -> Account:
    """An exchangelib Account on ``mailbox`` (default: the user's own) as ``user``; the version is
    probed from the server (version=None). ``auth_type=NOAUTH`` with user None for --no-auth.

    exchangelib shares one Protocol (and its session pool, 1 session unless ``max_connections``)
    per endpoint + credentials: while a GetStreamingEvents call holds that session, other calls
    with the same credentials wait for it. Give a concurrent writer ``max_connections=2`` on both
    accounts, or other credentials (bob as delegate, svc by impersonation)."""
    mailbox = mailbox or user
    credentials = None
    if auth_type != NOAUTH:
        credentials = Credentials(user, password if password is not None else USERS[user])
    config = Configuration(service_endpoint=emu.url, credentials=credentials, auth_type=auth_type,
                           version=None, retry_policy=retry_policy or FailFast(),
                           max_connections=max_connections)
    return Account(primary_smtp_address=mailbox, config=config, autodiscover=False, access_type=access_type)


@pytest.fixture
def account(emulator) -> Account:
    """alice's own account, Basic auth."""
    return make_account(emulator)


def admin_call(emu: RunningEmulator, method: str, path: str, payload: dict | None = None) -> dict:
    """Call the loopback admin API (e.g. admin_call(emu, "POST", "faults", {...}))."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(f"{emu.base_url}/_emulator/{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def spawn_emulator(data_dir: Path, **overrides) -> RunningEmulator:
    """Start an emulator subprocess outside a fixture (the caller stops it with ``.stop()``)."""
    return _emulator(data_dir, **overrides).start()


@pytest.fixture
def emulator_process(start_emulator) -> RunningEmulator:
    """Alias of ``emulator`` (it is a subprocess): ``.proc.pid`` lets a benchmark read its CPU."""
    return start_emulator()


__all__ = ["USERS", "IMPERSONATORS", "DELEGATES", "RunningEmulator", "make_account", "admin_call",
           "spawn_emulator", "DELEGATE", "IMPERSONATION", "NOAUTH"]


@pytest.fixture
def start_graph_emulator(start_emulator, tmp_path: Path):
    """Factory: an HTTPS emulator with the Graph test apps (see graph_helpers); returns (emu, ca)."""
    from .graph_helpers import graph_overrides

    def start(**extra):
        kw = graph_overrides(tmp_path / f"graph-tls{len(extra)}-{id(extra)}", **extra)
        ca = kw.pop("_ca")
        return start_emulator(**kw), ca

    return start


@pytest.fixture
def graph_env(start_graph_emulator):
    """(emulator, CA path, Graph client with the main app's MSAL token)."""
    from .graph_helpers import Graph, msal_token

    emu, ca = start_graph_emulator()
    g = Graph(emu, ca, msal_token(emu, ca))
    yield emu, ca, g
    g.close()
