"""`crmsync config check`: validate a configuration without connecting to anything and show,
per mailbox, the policy it will sync with (each key's effective value and where it came from).

Nothing here opens a database, a broker or an Exchange connection: the file and the
environment are read and validated (:func:`crmsync.config.load_settings`), that is all. An
invalid configuration exits 2 with one line per problem, each naming the key (and, for a
``[[mailbox]]`` key, the mailbox's index) and where its value came from.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from crmsync.errors import CrmsyncError

config_app = typer.Typer(help="Look at the configuration without connecting to anything.", no_args_is_help=True)

FORMATS = ("table", "json")


def _show(value: Any) -> str:
    """A value as an administrator would write it in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return ", ".join(f"{k} = {v}" for k, v in value.items()) or "(none)"
    if isinstance(value, (tuple, list)):
        return "; ".join(_show(v) for v in value) or "(none)"
    if hasattr(value, "column") and hasattr(value, "in_"):  # a push_filter rule
        return f"{value.column} in {', '.join(value.in_)}"
    return "" if value is None else str(value)


def _plain(value: Any) -> Any:
    """A value as JSON (push rules as their TOML tables)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def effective_policy(settings, address: str) -> list[tuple[str, Any, str]]:
    """(key, effective value, source) for every key of one mailbox, in the model's order.
    Source: ``mailbox`` (set in its ``[[mailbox]]``), ``[sync]`` (the mailbox leaves it out and
    ``[sync]`` sets it), ``[exchange]``, or ``default``."""
    from crmsync.config import POLICY_KEYS

    own = settings.mailbox(address)
    eff = settings.effective(address)
    rows: list[tuple[str, Any, str]] = []
    for name, info in type(own).model_fields.items():
        if name == "address":
            continue
        key = info.alias or name
        value = getattr(eff, name)
        if name in POLICY_KEYS or name in ("fields", "conflict_fields"):
            if getattr(own, name) is not None:
                source = "mailbox"
            else:
                source = "[sync]" if name in settings.sync.model_fields_set else "default"
        elif name == "api" and value is None:
            value = settings.exchange.api
            source = "[exchange]" if "api" in settings.exchange.model_fields_set else "default"
        else:
            source = "mailbox" if name in own.model_fields_set else "default"
        rows.append((key, value, source))
    return rows


@config_app.command("check")
def check(
    config: str | None = typer.Option(None, "--config", "-c", metavar="FILE",
                                      help="TOML file to check (default: crmsync's --config / CRMSYNC_CONFIG)"),
    fmt: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Validate the configuration without connecting to anything; print each mailbox's
    effective policy. Exit 0 when valid, 2 with the offending key(s) named when not."""
    from crmsync.cli import app as cli

    if fmt not in FORMATS:
        raise CrmsyncError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if config is not None:
        cli.state.config = config
    loaded = cli.settings()  # ConfigError: one line per problem, exit 2 (crmsync.cli.app.main)
    mailboxes = loaded.require_mailboxes()
    if loaded.console.secret_key_env:
        loaded.console.secret_key()   # ConfigError naming console.secret_key_env when the variable is unset
    policies = {m.address: effective_policy(loaded, m.address) for m in mailboxes}
    if fmt == "json":
        cli.console.print_json(json.dumps({address: {key: _plain(value) for key, value, _ in rows}
                                           for address, rows in policies.items()}))
        return
    source = loaded.config_path or "defaults and CRMSYNC_* environment variables"
    cli.console.print(f"configuration valid ({source}); {len(mailboxes)} mailbox(es); nothing was contacted",
                      markup=False, highlight=False)
    from pathlib import Path

    users = Path(loaded.console.users_file)
    state = "present" if users.exists() else "absent: add users with `crmsync console add-user NAME`"
    cli.console.print(f"console users file: {users} ({state})", markup=False, highlight=False)
    for address, rows in policies.items():
        table = Table(title=f"mailbox {address}", title_justify="left")
        table.add_column("option")
        table.add_column("effective value", overflow="fold")
        table.add_column("from")
        for key, value, origin in rows:
            table.add_row(Text(key), Text(_show(value)), Text(origin))  # Text: "[sync]" is no markup
        cli.console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``crmsync config ...`` to the ``crmsync`` app."""
    app.add_typer(config_app, name="config")
