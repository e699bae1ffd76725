"""Benchmark: is the EWS emulator ever the bottleneck for an exchangelib client?

Starts the emulator as a subprocess (so its CPU time is its own), then with the unmodified
exchangelib client:

  1. ``bulk_create`` N contacts (exchangelib chunks them, 100 per CreateItem by default);
  2. ``sync_items`` over them (a full initial SyncFolderItems, all contact fields).

For each phase it prints contacts/s, the emulator's CPU seconds per contact and the client's CPU
seconds per contact, and a PASS/FAIL line for "server CPU per contact < client CPU per contact".
It prints figures and never asserts timings (DESIGN.md §7).

    python tests/bench/bench_emulator.py [--n 10000] [--keep-data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.emulator_proc import running_emulator  # noqa: E402

USER = "bench@example.com"
PASSWORD = "bench-password"  # a throwaway credential for a loopback-only emulator


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (fields 14 and 15 of stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _account(port: int):
    from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials

    config = Configuration(
        service_endpoint=f"http://127.0.0.1:{port}/EWS/Exchange.asmx",
        credentials=Credentials(USER, PASSWORD),
        auth_type=BASIC,
        max_connections=4,
    )
    return Account(USER, config=config, autodiscover=False, access_type=DELEGATE)


def _contacts(n: int):
    from exchangelib import Contact
    from exchangelib.indexed_properties import EmailAddress, PhoneNumber

    for i in range(n):
        yield Contact(
            given_name=f"Given{i}",
            surname=f"Surname{i}",
            display_name=f"Given{i} Surname{i}",
            company_name=f"Company {i % 97}",
            job_title="Buyer",
            email_addresses=[EmailAddress(email=f"person{i}@example.org", label="EmailAddress1")],
            phone_numbers=[PhoneNumber(label="BusinessPhone", phone_number=f"+1 555 {i:07d}")],
        )


@dataclass
class Phase:
    name: str
    contacts: int
    wall: float
    client_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.contacts / self.wall if self.wall else float("inf")

    @property
    def server_per(self) -> float:
        return self.server_cpu / self.contacts

    @property
    def client_per(self) -> float:
        return self.client_cpu / self.contacts


@contextlib.contextmanager
def _measure(pid: int, out: dict[str, float]) -> Iterator[None]:
    w0, c0, s0 = time.perf_counter(), time.process_time(), _cpu_seconds(pid)
    yield
    out.update(wall=time.perf_counter() - w0, client_cpu=time.process_time() - c0,
               server_cpu=_cpu_seconds(pid) - s0)


def run(n: int, data_dir: Path) -> list[Phase]:
    phases: list[Phase] = []
    with running_emulator(data_dir, {USER: PASSWORD}) as emu:
        proc, port = emu.proc, emu.port
        account = _account(port)
        folder = account.contacts
        items = list(_contacts(n))  # built before timing: object construction is not the wire
        m: dict[str, float] = {}
        with _measure(proc.pid, m):
            results = account.bulk_create(folder=folder, items=items)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise SystemExit(f"bulk_create: {len(errors)} of {n} failed, first: {errors[0]!r}")
        phases.append(Phase("bulk_create", n, **m))

        seen = 0
        with _measure(proc.pid, m):
            for change_type, _item in folder.sync_items():
                seen += change_type == "create"
        if seen != n:
            print(f"warning: sync_items reported {seen} creates for {n} contacts", file=sys.stderr)
        phases.append(Phase("sync_items (all fields, 100/page)", seen, **m))

        seen = 0
        folder.item_sync_state = None  # a second full sync, not an incremental one
        with _measure(proc.pid, m):
            for change_type, _item in folder.sync_items(only_fields=["display_name"], max_changes_returned=512):
                seen += change_type == "create"
        phases.append(Phase("sync_items (display_name, 512/page)", seen, **m))
    return phases


def _print(phases: list[Phase], n: int) -> bool:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"EWS emulator vs exchangelib client, {n} contacts")
    for col in ("phase", "contacts/s", "wall s", "server CPU s", "client CPU s",
                "server CPU ms/contact", "client CPU ms/contact", "server/client"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    ok = True
    for p in phases:
        ratio = p.server_per / p.client_per if p.client_per else float("inf")
        ok &= ratio < 1
        table.add_row(p.name, f"{p.rate:,.0f}", f"{p.wall:.2f}", f"{p.server_cpu:.2f}", f"{p.client_cpu:.2f}",
                      f"{p.server_per * 1000:.3f}", f"{p.client_per * 1000:.3f}", f"{ratio:.2f}")
    console = Console(width=160)
    console.print(table)
    create = phases[0]
    verdict = "PASS" if create.server_per < create.client_per else "FAIL"
    console.print(f"{verdict}: server CPU per created contact {create.server_per * 1000:.3f} ms "
                  f"{'<' if verdict == 'PASS' else '>='} client CPU per contact {create.client_per * 1000:.3f} ms")
    console.print(f"{'PASS' if ok else 'FAIL'}: server CPU per contact below the client's in every phase")
    return verdict == "PASS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="contacts to create (default 10000)")
    parser.add_argument("--keep-data", type=Path, default=None,
                        help="keep the emulator's data and log in this directory (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    data_dir = args.keep_data or Path(tempfile.mkdtemp(prefix="bench-ews-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        phases = run(args.n, data_dir)
    finally:
        if args.keep_data is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if _print(phases, args.n) else 1


if __name__ == "__main__":
    sys.exit(main())
