"""`crmsync deletes list | approve | discard`: the administrator's half of the delete brake.

Wiring of ``crmsync.service.deletes`` onto the container: rich tables by default, ``--format
json|csv`` for scripts, a progress bar while decisions are carried out. A decision is carried out
here at once through the normal apply path; whatever cannot be done now (Exchange down, a lease
taken) stays as a pending event that the producer's re-drive publishes to the workers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from crmsync.cli.linking import _check_format, _emit
from crmsync.service.deletes import DeleteReview

deletes_app = typer.Typer(help="Deletes held by the delete brake: list them, approve or discard them.",
                          no_args_is_help=True)


def _review(c) -> DeleteReview:
    return DeleteReview(held=c.held_deletes, store=c.store, clock=lambda: datetime.now(UTC))


def held_problems(c) -> list[str]:
    """Lines for `crmsync status --check`: a mailbox with held deletes needs a person."""
    per: dict[str, int] = {}
    for row in _review(c).pending():
        per[row.mailbox] = per.get(row.mailbox, 0) + 1
    return [f"{mb}: {n} delete(s) held by the delete brake; `crmsync deletes list`, then approve or discard"
            for mb, n in sorted(per.items())]


@deletes_app.command("list")
def list_(
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
) -> None:
    """The held deletes: id, mailbox, CRM record, the side the delete would land on, since when."""
    from crmsync.cli import app as cli

    _check_format(fmt)
    c = cli.ready_container()
    mb = c.settings.mailbox(mailbox).address if mailbox else None
    rows = [[r.id, r.mailbox, r.crm_key, r.side, r.noted_at.isoformat(timespec="seconds")] for r in _review(c).pending(mb)]
    _emit(fmt, "held deletes", ["id", "mailbox", "crm_key", "delete_on", "held_since"], rows)


def _decide(decision: Literal["approve", "discard"], ids: list[int], all_: bool, mailbox: str | None) -> None:
    from crmsync.cli import app as cli
    from crmsync.service.apply import apply_events

    if bool(ids) == all_:
        raise typer.BadParameter("name held delete ids, or --all (not both)")
    c = cli.ready_container()
    mb = c.settings.mailbox(mailbox).address if mailbox else None
    rows, events = _review(c).decide(decision, list(ids) if ids else None, mb)
    failed: dict[int, BaseException] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=cli.err,
                  transient=True) as bar:
        task = bar.add_task(f"{decision}: carrying out", total=len(events))
        for start in range(0, len(events), 50):
            chunk = events[start:start + 50]
            failed.update(apply_events(c.sync_services, chunk).errors)
            bar.update(task, advance=len(chunk))
    verb = "approved" if decision == "approve" else "discarded"
    cli.console.print(f"{len(rows)} held delete(s) {verb}; {len(events) - len(failed)} carried out now"
                      + (f", {len(failed)} left to the workers (retried by the re-drive)" if failed else ""))


@deletes_app.command()
def approve(
    ids: list[int] = typer.Argument(None, help="held delete ids (see `crmsync deletes list`)"),
    all_: bool = typer.Option(False, "--all", help="every held delete (of --mailbox when given)"),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="with --all: only this mailbox"),
) -> None:
    """Let held deletes cross: the contact goes to Deleted Items / the CRM account is deactivated,
    as the mailbox's delete rules say. Each link is re-read first: a record restored meanwhile
    is merged, not deleted."""
    _decide("approve", ids, all_, mailbox)


@deletes_app.command()
def discard(
    ids: list[int] = typer.Argument(None, help="held delete ids (see `crmsync deletes list`)"),
    all_: bool = typer.Option(False, "--all", help="every held delete (of --mailbox when given)"),
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="with --all: only this mailbox"),
) -> None:
    """Stop held deletes from crossing. Nothing is restored on the deleting side; the pair stays
    unlinked-by-delete until a person brings the deleted side back."""
    _decide("discard", ids, all_, mailbox)


def register(app: typer.Typer) -> None:
    """Add the policy commands to the ``crmsync`` app."""
    app.add_typer(deletes_app, name="deletes")
