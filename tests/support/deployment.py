"""A minimal deployment on disk for CLI tests that need no Exchange: SQLite CRM and state
databases (migrated), a private Redis database as broker, and a config naming the mailboxes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from crmsync.adapters.database import init_crm, init_state, make_engine


@contextmanager
def sqlite_deployment(tmp_path: Path, broker_url: str, mailboxes: Sequence[str]) -> Iterator[tuple[Path, object]]:
    """(config path, state engine); the engines are disposed afterwards."""
    crm, state = make_engine(f"sqlite:///{tmp_path / 'crm.db'}"), make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    init_crm(crm)
    init_state(state)
    config = tmp_path / "crmsync.toml"
    config.write_text(f'[crm]\nurl = "sqlite:///{tmp_path / "crm.db"}"\n[state]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
                      f'[broker]\nurl = "{broker_url}"\n'
                      + "".join(f'[[mailbox]]\naddress = "{m}"\n' for m in mailboxes))
    try:
        yield config, state
    finally:
        crm.dispose()
        state.dispose()
