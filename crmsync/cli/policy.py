"""`crmsync deletes list | approve | discard` and `crmsync conflicts list | show | resolve`: the
administrator's half of the delete brake and of the manual conflict queue.

Wiring of ``crmsync.service.deletes`` and ``crmsync.service.conflicts`` onto the container: rich tables by default, ``--format
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
from crmsync.core.deletes import reason_text
from crmsync.service.conflicts import ConflictQueue
from crmsync.service.deletes import DeleteReview

deletes_app = typer.Typer(help="Deletes held by the delete brake: list them, approve or discard them.",
                          no_args_is_help=True)


def _review(c) -> DeleteReview:
    return DeleteReview(held=c.held_deletes, store=c.store, clock=lambda: datetime.now(UTC))


def waiting_counts(c) -> dict[str, dict[str, int]]:
    """What waits for a person, per mailbox (every configured one, zeros included): held
    deletes, open (held) conflicts and review items; the numbers `crmsync status` lists and
    the metrics endpoint serves (crmsync_held_deletes, crmsync_open_conflicts, crmsync_review_items)."""
    from crmsync.service import review

    zero = {"held_deletes": 0, "open_conflicts": 0, "review_items": 0}
    out = {m.address: dict(zero) for m in c.settings.mailboxes}
    for row in _review(c).pending():
        out.setdefault(row.mailbox, dict(zero))["held_deletes"] += 1
    for conflict in _queue(c).pending():
        out.setdefault(conflict.mailbox, dict(zero))["open_conflicts"] += 1
    for mailbox, n in review.counts(c.review_queue, c.store).items():
        out.setdefault(mailbox, dict(zero))["review_items"] = n
    return out


def held_problems(c) -> list[str]:
    """Lines for `crmsync status --check`: held deletes and held conflicts need a person."""
    per: dict[tuple[str, str], int] = {}
    for row in _review(c).pending():
        why = row.reason if row.reason in ("folder-empty", "folder-missing") else "brake"
        per[row.mailbox, why] = per.get((row.mailbox, why), 0) + 1
    lines = [f"{mb}: {n} delete(s) held by the delete brake; `crmsync deletes list`, then approve or discard"
             if why == "brake" else
             f"{mb}: {n} delete(s) held: {reason_text(why)}; check the folder in Outlook, then "
             "`crmsync deletes list` and approve or discard"
             for (mb, why), n in sorted(per.items())]
    waiting: dict[str, int] = {}
    for conflict in _queue(c).pending():
        waiting[conflict.mailbox] = waiting.get(conflict.mailbox, 0) + 1
    return lines + [f"{mb}: {n} conflict(s) wait for a person; `crmsync conflicts list`, then resolve"
                    for mb, n in sorted(waiting.items())]


@deletes_app.command("list")
def list_(
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
) -> None:
    """The held deletes: id, mailbox, CRM record, the side the delete would land on, since when,
    and why (the delete brake, or the empty-folder guard: the sync folder read empty or vanished)."""
    from crmsync.cli import app as cli

    _check_format(fmt)
    c = cli.ready_container()
    mb = c.settings.mailbox(mailbox).address if mailbox else None
    rows = [[r.id, r.mailbox, r.crm_key, r.side, r.noted_at.isoformat(timespec="seconds"), reason_text(r.reason)]
            for r in _review(c).pending(mb)]
    _emit(fmt, "held deletes", ["id", "mailbox", "crm_key", "delete_on", "held_since", "reason"], rows)


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


conflicts_app = typer.Typer(help="Fields held by conflict_policy = \"manual\": list, show and resolve them.",
                            no_args_is_help=True)


def _queue(c) -> ConflictQueue:
    return ConflictQueue(conflicts=c.held_conflicts, store=c.store, clock=lambda: datetime.now(UTC))


CONFLICT_COLUMNS = ["id", "mailbox", "crm_key", "field", "crm_value", "exchange_value", "base_value", "held_since"]


def _conflict_row(r) -> list:
    return [r.id, r.mailbox, r.crm_key, r.field, r.crm_value, r.exchange_value, r.base_value,
            r.held_at.isoformat(timespec="seconds") if r.held_at else None]


@conflicts_app.command("list")
def conflicts_list(
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="only this mailbox"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
) -> None:
    """The held fields: both sides' values and the last synced one."""
    from crmsync.cli import app as cli

    _check_format(fmt)
    c = cli.ready_container()
    mb = c.settings.mailbox(mailbox).address if mailbox else None
    _emit(fmt, "held conflicts", CONFLICT_COLUMNS, [_conflict_row(r) for r in _queue(c).pending(mb)])


@conflicts_app.command("show")
def conflicts_show(
    conflict_id: int = typer.Argument(..., help="the conflict id (see `crmsync conflicts list`)"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
) -> None:
    """One conflict, with its status and, once decided, the value and who decided."""
    from crmsync.cli import app as cli

    _check_format(fmt)
    r = _queue(cli.ready_container()).show(conflict_id)
    _emit(fmt, f"conflict {conflict_id}", [*CONFLICT_COLUMNS, "status", "value", "decided_by"],
          [[*_conflict_row(r), r.status, r.value, r.decided_by]])


@conflicts_app.command("resolve")
def conflicts_resolve(
    conflict_id: int = typer.Argument(..., help="the conflict id (see `crmsync conflicts list`)"),
    take: str | None = typer.Option(None, "--take", help="crm | exchange: keep that side's value"),
    value: str | None = typer.Option(None, "--value", help="write this value on both sides instead"),
) -> None:
    """Decide a held field; the value is written on both sides at once (or by the workers)."""
    import getpass

    from crmsync.cli import app as cli
    from crmsync.service.apply import apply_events

    if take is not None and take not in ("crm", "exchange"):
        raise typer.BadParameter("--take must be crm or exchange")
    c = cli.ready_container()
    row, events = _queue(c).resolve(conflict_id, take, value, f"cli:{getpass.getuser()}")  # type: ignore[arg-type]
    failed = apply_events(c.sync_services, events).errors
    cli.console.print(f"conflict {row.id} ({row.crm_key} {row.field}) resolved by {row.decided_by}; "
                      + ("left to the workers (retried by the re-drive)" if failed else "written on both sides"),
                      markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the policy commands to the ``crmsync`` app."""
    app.add_typer(deletes_app, name="deletes")
    app.add_typer(conflicts_app, name="conflicts")
