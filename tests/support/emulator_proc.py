"""Run the EWS emulator as a real subprocess on a free port, for contract and e2e tests.

    emu = start_emulator(tmp_path, users={"alice@example.com": "secret1"})
    emu.endpoint                      # http://127.0.0.1:PORT/EWS/Exchange.asmx
    emu.admin("/_emulator/faults", "POST", {"operation": "CreateItem", "kind": "server_busy", "count": 1})
    emu.restart()                     # same port, same data directory
    emu.stop()                        # terminate by its own pid, then wait

The emulator is driven over HTTP only (DESIGN §6): the helper never imports ews_emulator.
Its output goes to ``<data>/emulator.log``; a failed start raises with the log's tail.
"""

from __future__ import annotations

import contextlib
import json as _json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class EmulatorProcess:
    """A running ``python -m ews_emulator``; restartable on the same port and data."""

    data_dir: Path
    port: int
    users: dict[str, str]
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    start_timeout: float = 30.0
    host: str = "127.0.0.1"          # where it listens; clients always come over loopback

    @property
    def scheme(self) -> str:
        return "https" if "--tls-cert" in self.extra_args else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/EWS/Exchange.asmx"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def graph_base(self) -> str:
        """The Graph front door (``.../v1.0``); tokens come from ``{base_url}/{tenant}/oauth2/v2.0/token``."""
        return f"{self.base_url}/v1.0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "emulator.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ews_emulator", "--host", self.host, "--port", str(self.port),
               "--data", str(self.data_dir / "store")]
        for address, password in self.users.items():
            cmd += ["--user", f"{address}:{password}"]
        return cmd + list(self.extra_args)

    def start(self) -> EmulatorProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + self.start_timeout
        while not _port_answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ews_emulator exited with {self.proc.returncode} on start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ews_emulator did not listen on port {self.port} within "
                                   f"{self.start_timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (SIGTERM) by pid and wait; SIGKILL if it does not exit in ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL by pid (a crash, for reliability tests)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> EmulatorProcess:
        """Stop and start again on the same port with the same data (the store survives)."""
        self.stop()
        # The old socket may linger briefly; wait until the port is free before starting again.
        deadline = time.monotonic() + 10
        while _port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def admin(self, path: str, method: str = "GET", json: Any = None, timeout: float = 10.0) -> Any:
        """Call the loopback admin API (``/_emulator/...``); returns the decoded JSON reply.

        Raises RuntimeError with the status and body on a non-2xx answer.
        """
        if not path.startswith("/"):
            path = "/" + path
        if not path.startswith("/_emulator/"):
            path = "/_emulator" + path
        data = None if json is None else _json.dumps(json).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method.upper(),
                                     headers={"Content-Type": "application/json"})
        try:
            # Loopback to our own test server: its certificate (if any) is a throwaway self-signed one.
            context = ssl._create_unverified_context() if self.scheme == "https" else None
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"emulator admin {method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
        return _json.loads(raw) if raw else None

    # Conveniences over the admin API ------------------------------------------------------
    def inject_fault(self, operation: str, kind: str, count: int = 1, **extra: Any) -> Any:
        return self.admin("/_emulator/faults", "POST", {"operation": operation, "kind": kind, "count": count, **extra})

    def clear_faults(self) -> Any:
        return self.admin("/_emulator/faults", "DELETE")

    def stats(self) -> dict[str, int]:
        return dict((self.admin("/_emulator/stats") or {}).get("requests", {}))

    def reset_stats(self) -> Any:
        return self.admin("/_emulator/stats/reset", "POST")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_emulator(data_dir: str | Path, users: Mapping[str, str] | None = None,
                   extra_args: Sequence[str] = (), port: int | None = None) -> EmulatorProcess:
    """Start the emulator with these Basic users (address -> password) and wait until it listens."""
    users = dict(users or {"alice@example.com": "secret1"})
    return EmulatorProcess(data_dir=Path(data_dir), port=port or free_port(), users=users,
                           extra_args=list(extra_args)).start()


@contextlib.contextmanager
def running_emulator(data_dir: str | Path, users: Mapping[str, str] | None = None,
                     extra_args: Sequence[str] = ()) -> Iterator[EmulatorProcess]:
    """``start_emulator`` for the length of a with-block; always stopped by its own pid."""
    emu = start_emulator(data_dir, users, extra_args)
    try:
        yield emu
    finally:
        emu.stop()


def self_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for ``host`` (for ``--tls-cert``/``--tls-key``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def ca_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``host`` signed by it: (ca.pem, cert.pem, key.pem).

    Clients that verify TLS (requests, hence MSAL; httpx) refuse a bare self-signed leaf as its own
    trust anchor, so tests that verify pass ``verify=ca.pem``. The same CA the demo makes."""
    from crmsync.cli.demo_tls import make_demo_ca

    return make_demo_ca(Path(directory), host)
