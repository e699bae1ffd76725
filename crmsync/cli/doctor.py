"""``crmsync doctor``: check a deployment end to end and say how to fix what is wrong.

The checks live in crmsync.service.doctor (judgement) and the probes in the adapters (facts);
this module loads the configuration, runs them and prints the result. Every line passes the
log redaction, so no password, token or URL password is ever printed.
"""

from __future__ import annotations

import json
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


class Format(StrEnum):
    table = "table"
    json = "json"


def _config_check():
    """(settings or None, the config Check): a config that does not load is the first FAIL,
    and nothing else can be checked."""
    from crmsync.cli.app import settings
    from crmsync.errors import ConfigError
    from crmsync.service.doctor import Check

    try:
        loaded = settings()
    except ConfigError as exc:
        return None, Check("config", "FAIL", str(exc).replace("\n", "; "),
                           "correct the key(s) named above (deploy/crmsync.example.toml documents every key)")
    source = loaded.config_path or "built-in defaults and CRMSYNC_* environment"
    return loaded, Check("config", "OK", f"valid ({source}); {len(loaded.mailboxes)} mailbox(es)")


def deployment_checks(container) -> list:
    """The doctor's checks of a loaded configuration's deployment (also the console's overview)."""
    from crmsync.config import mask_url
    from crmsync.service.doctor import run_checks
    from schemas.events import queue_names

    loaded = container.settings
    return run_checks(
        container.doctor_probes(),
        crm_where=mask_url(loaded.crm.url), state_where=mask_url(loaded.state.url),
        broker_where=mask_url(loaded.broker.url),
        mailboxes=[(m.address, m.folder) for m in loaded.mailboxes],
        queues=queue_names(loaded.worker.queue_prefix),
        graph={m.address for m in loaded.mailboxes if container.api(m.address) == "graph"})


def check_rows(checks) -> list[dict[str, str]]:
    """The checks as rows, every text redacted (no password, token or URL password)."""
    from crmsync.config import mask_url
    from crmsync.logging_setup import redact_text

    return [{"check": c.name, "status": c.status, "detail": redact_text(mask_url(c.detail)),
             "fix": redact_text(c.fix)} for c in checks]


def doctor(
    output: Format = typer.Option(Format.table, "--format", help="table for people, json for scripts"),
) -> None:
    """Check the configuration, the CRM database (schema, triggers), the state database
    (migration level), Redis (eviction policy, persistence), Exchange (endpoint, TLS,
    credentials, each mailbox's folder) and the Celery workers. Prints OK / WARN / FAIL with the
    fix for each problem; exits 1 when anything FAILs (WARN alone exits 0)."""
    from crmsync.service.doctor import failed

    loaded, config_check = _config_check()
    checks = [config_check]
    if loaded is not None:
        from crmsync.bootstrap import container_for

        container = container_for(loaded)
        checks += deployment_checks(container)
        container.dispose()
    rows = check_rows(checks)
    if output is Format.json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title="crmsync doctor", show_lines=False)
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(Text(row["check"]), Text(row["status"], style=_STYLE[row["status"]]),
                          Text(row["detail"]), Text(row["fix"]))
        Console().print(table)
        worst = "FAIL" if failed(checks) else ("WARN" if any(c.status == "WARN" for c in checks) else "OK")
        Console().print(f"overall: [{_STYLE[worst]}]{worst}[/]")
    if failed(checks):
        raise typer.Exit(1)
