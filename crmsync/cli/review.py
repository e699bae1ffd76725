"""`crmsync review list | accept | reject`: the review queue of new records (issue 8).

A thin shell over ``crmsync.service.review``: rich tables by default, ``--format json|csv`` for
scripts. A decision is carried out at once through the normal apply path (the event it adds);
what cannot be done now (Exchange down, a lease taken) stays a pending event that the
producer's re-drive publishes to the workers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from crmsync.cli.linking import _check_format, _emit
from crmsync.service import review as service

review_app = typer.Typer(
    help="Records new on one side that match an unlinked record on the other side (a second source of "
         "accounts) and wait for a person: list them, accept (link to a candidate) or reject (create).",
    no_args_is_help=True)

COLUMNS = ["id", "mailbox", "new_on", "record", "name", "candidate", "candidate_name", "score", "agree",
           "disagree", "reason"]


def _clock() -> datetime:
    return datetime.now(UTC)


def review_lines(c) -> list[str]:
    """Lines for `crmsync status`: records waiting in the review queue, per mailbox."""
    return [f"{mb}: {n} new record(s) wait in the review queue; `crmsync review list`, then accept or reject"
            for mb, n in sorted(service.counts(c.review_queue, c.store).items())]


def _rows(items) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for item in items:
        cands = item.candidates or ({},)
        for n, cand in enumerate(cands):
            first = n == 0
            rows.append([item.id if first else "", item.mailbox if first else "",
                         item.side if first else "", item.record_key if first else "", item.name if first else "",
                         cand.get("key", ""), cand.get("name", ""),
                         f"{cand['score']:.4f}" if "score" in cand else "", ", ".join(cand.get("agree", ())),
                         ", ".join(cand.get("disagree", ())), item.reason if first else ""])
    return rows


@review_app.command("list")
def list_(
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
) -> None:
    """The waiting records: the new record, each candidate with its score and the fields that
    agree and differ, and why it waits. Reads only."""
    from crmsync.cli import app as cli

    _check_format(fmt)
    c = cli.ready_container()
    mb = c.settings.mailbox(mailbox).address if mailbox else None
    items = service.list_items(c.review_queue, mb, c.store)
    if fmt == "json":
        import json

        cli.console.print_json(json.dumps([{"id": i.id, "mailbox": i.mailbox, "new_on": i.side,
                                            "record": i.record_key, "name": i.name, "reason": i.reason,
                                            "candidates": list(i.candidates)} for i in items]))
        return
    _emit(fmt, "new records waiting for a person", COLUMNS, _rows(items))


def _carry_out(c, events: list[int]) -> str:
    from crmsync.service.apply import apply_events

    failed = apply_events(c.sync_services, events).errors
    return "left to the workers (retried by the re-drive)" if failed else "done"


@review_app.command("accept")
def accept(
    item_id: int = typer.Argument(..., metavar="ID", help="the review item (see `crmsync review list`)"),
    candidate: str | None = typer.Option(None, "--candidate", metavar="KEY",
                                         help="the candidate to link (default: the best one)"),
) -> None:
    """Link the new record to a candidate: the two are merged, nothing is created."""
    import getpass

    from crmsync.cli import app as cli

    c = cli.ready_container()
    row, events = service.accept(c.review_queue, c.store, item_id, candidate, f"cli:{getpass.getuser()}", _clock)
    cli.console.print(f"review item {row.id}: {row.record_key} linked to {row.chosen}; {_carry_out(c, events)}",
                      markup=False, highlight=False)


@review_app.command("reject")
def reject(
    item_id: int = typer.Argument(..., metavar="ID", help="the review item (see `crmsync review list`)"),
) -> None:
    """None of the candidates is this person: create the new record on the other side."""
    import getpass

    from crmsync.cli import app as cli

    c = cli.ready_container()
    row, events = service.reject(c.review_queue, c.store, item_id, f"cli:{getpass.getuser()}", _clock)
    cli.console.print(f"review item {row.id}: {row.record_key} rejected, created on the other side; "
                      f"{_carry_out(c, events)}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `crmsync review ...` to the ``crmsync`` app."""
    app.add_typer(review_app, name="review")
