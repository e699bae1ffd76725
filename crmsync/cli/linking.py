"""`crmsync match | link | unlink | plan`: the first sync without duplicates.

Wiring of ``crmsync.service.linking`` onto the container, and its output: rich tables by default,
``--format json|csv`` for scripts, a progress bar while both sides are read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crmsync.core.matching import DEFAULT_MIN_SCORE, Candidate, MatchPolicy
from crmsync.errors import CrmsyncError
from crmsync.service.linking import LinkingService

FORMATS = ("table", "json", "csv")


def linking_service(container) -> LinkingService:
    """The linking service on the container's adapters (also the producer's first-sync gate)."""
    from crmsync.adapters.state.links_query import SqlLinkEditor

    settings = container.settings

    def with_contacts(mailbox: str) -> bool:
        return settings.mailbox(mailbox).secondary_contacts

    return LinkingService(store=container.store, crm=container.crm, exchange_for=container.exchange_side,
                          folder_for=container.exchange_feed, editor=SqlLinkEditor(container.state_engine),
                          policy=MatchPolicy(region=settings.sync.phone_region), with_contacts=with_contacts)


def first_sync_gate(container):
    """mailbox -> None (go ahead) or why its first sync waits, per ``[sync] first_sync``."""
    service = linking_service(container)
    mode = container.settings.sync.first_sync
    return lambda mailbox: service.first_sync_gate(mailbox, mode)


# ----------------------------------------------------------------------------- helpers

def _app_parts():
    from crmsync.cli import app as cli

    return cli


def _mailbox(container, given: str | None) -> str:
    mailboxes = container.settings.require_mailboxes()
    if given:
        return container.settings.mailbox(given).address
    if len(mailboxes) == 1:
        return mailboxes[0].address
    raise CrmsyncError(f"{len(mailboxes)} mailboxes are configured: name one with --mailbox "
                       f"({', '.join(m.address for m in mailboxes)})")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise CrmsyncError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress bar fed by the service's (stage, done, total) callback."""
    if not enabled:
        yield None
        return
    cli = _app_parts()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=cli.err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


def _emit(fmt: str, title: str, columns: Sequence[str], rows: list[list[Any]]) -> None:
    cli = _app_parts()
    if fmt == "json":
        cli.console.print_json(json.dumps([dict(zip(columns, r, strict=True)) for r in rows]))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        typer.echo(out.getvalue(), nl=False)
    else:
        table = Table(title=title)
        for column in columns:   # ids are folded, never cut: they are typed into `crmsync link`
            table.add_column(column, overflow="fold" if column in ("item_id", "crm_key") else "ellipsis")
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        cli.console.print(table)


def _evidence(cand: Candidate, agree: bool) -> str:
    evs = cand.agree if agree else cand.disagree
    return ", ".join(ev.signal + (f" ({ev.note})" if ev.note else "") for ev in evs)


def _name(snap, cand: Candidate, side: str) -> str:
    from crmsync.service.linking import display_name

    rec = snap.crm.get(cand.crm_key) if side == "crm" else snap.exchange.get(cand.exchange_key)
    return display_name(rec.record) if rec is not None else ""


# ----------------------------------------------------------------------------- commands

def register(app: typer.Typer) -> None:
    """Add the linking commands to the ``crmsync`` app."""

    @app.command()
    def match(
        mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="the mailbox (default: the only one)"),
        min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="list pairs scoring at least this (0..1)"),
        fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    ) -> None:
        """List candidate pairs of an unlinked CRM record and an unlinked Outlook contact that
        look like the same person, with their score and the fields that agree and disagree.
        Reads only. `auto` says whether `crmsync link --auto` would link the pair."""
        _check_format(fmt)
        c = _app_parts().ready_container()
        mb = _mailbox(c, mailbox)
        with _progress(fmt == "table") as progress:
            report = linking_service(c).match(mb, min_score, progress)
        auto = {(x.crm_key, x.exchange_key) for x in report.decision.links}
        rows = [[x.crm_key, _name(report.snapshot, x, "crm"), x.exchange_key, _name(report.snapshot, x, "exchange"),
                 f"{x.score:.4f}", _evidence(x, True), _evidence(x, False),
                 "yes" if (x.crm_key, x.exchange_key) in auto else "no"] for x in report.candidates]
        _emit(fmt, f"candidate pairs in {mb} (score >= {min_score})",
              ["crm_key", "crm_name", "item_id", "outlook_name", "score", "agree", "disagree", "auto"], rows)

    @app.command()
    def link(
        crm_key: str | None = typer.Argument(None, help="the CRM record, e.g. account:A-1 or contact:7"),
        item_id: str | None = typer.Argument(None, help="the Outlook contact's ItemId (see `crmsync match`)"),
        mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="the mailbox (default: the only one)"),
        auto: bool = typer.Option(False, "--auto", help="link every unambiguous pair scoring --min-score or more"),
        min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="with --auto: the lowest score linked"),
        dry_run: bool = typer.Option(False, "--dry-run", help="with --auto: show what would be linked, link nothing"),
        fmt: str = typer.Option("table", "--format", help="with --auto: table | json | csv"),
    ) -> None:
        """Link a CRM record and an Outlook contact that are the same person, so the next sync
        merges the two instead of creating each on the other side. With --auto, link every
        pair the matcher is sure of (one-to-one only); ambiguous ones are listed for you."""
        _check_format(fmt)
        c = _app_parts().ready_container()
        mb = _mailbox(c, mailbox)
        service = linking_service(c)
        cli = _app_parts()
        if not auto:
            if not crm_key or not item_id:
                raise CrmsyncError("link: give CRM_KEY and ITEM_ID, or --auto")
            service.link(mb, crm_key, item_id)
            cli.console.print(f"linked {crm_key} and item {item_id} in {mb}: the next sync merges them")
            return
        if crm_key or item_id:
            raise CrmsyncError("link --auto takes no CRM_KEY or ITEM_ID")
        with _progress(fmt == "table") as progress:
            result = service.auto_link(mb, min_score, dry_run=dry_run, progress=progress)
        verb = "would link" if dry_run else "linked"
        rows = [[verb, x.crm_key, x.exchange_key, f"{x.score:.4f}", _evidence(x, True)] for x in result.linked]
        rows += [["failed", x.crm_key, x.exchange_key, f"{x.score:.4f}", why] for x, why in result.failed]
        rows += [["needs a person", n.key if n.side == "crm" else "", n.key if n.side == "exchange" else "",
                  f"{n.candidates[0].score:.4f}", n.detail] for n in result.needs_person]
        _emit(fmt, f"link --auto in {mb} (score >= {min_score})",
              ["result", "crm_key", "item_id", "score", "why"], rows)
        if fmt == "table":
            cli.console.print(f"{len(result.linked)} pair(s) {verb}, {len(result.needs_person)} record(s) need a "
                              f"person, {len(result.failed)} failed")

    @app.command()
    def unlink(
        key_or_item: str = typer.Argument(..., metavar="CRM_KEY|ITEM_ID", help="either side of the link"),
        mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="the mailbox (default: the only one)"),
    ) -> None:
        """Remove a link made by `crmsync link` before the first sync merged the pair."""
        c = _app_parts().ready_container()
        mb = _mailbox(c, mailbox)
        gone = linking_service(c).unlink(mb, key_or_item)
        _app_parts().console.print(f"unlinked {gone.crm_key} and item {gone.item_id} in {mb}")

    @app.command()
    def plan(
        mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="the mailbox (default: the only one)"),
        min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="score of a probable duplicate"),
        fmt: str = typer.Option("table", "--format", help="table | json | csv"),
        all_rows: bool = typer.Option(False, "--all", help="list every record (default: merges and warnings)"),
    ) -> None:
        """A dry run of a mailbox's first sync: for each record whether it would be created in
        Exchange, created in the CRM, merged with its linked or matched record, or left alone;
        with counts and warnings about probable duplicates. Writes nothing anywhere."""
        _check_format(fmt)
        c = _app_parts().ready_container()
        mb = _mailbox(c, mailbox)
        with _progress(fmt == "table") as progress:
            result = linking_service(c).plan(mb, c.settings.sync.first_sync, min_score, progress)
        columns = ["action", "crm_key", "item_id", "name", "note"]
        rows = [[r.action, r.crm_key, r.item_id, r.name, r.note] for r in result.rows]
        if fmt == "json":
            cli = _app_parts()
            cli.console.print_json(json.dumps({
                "mailbox": mb, "first_sync": result.mode, "held": result.held, "counts": result.counts(),
                "warnings": list(result.warnings), "records": [dict(zip(columns, r, strict=True)) for r in rows]}))
            return
        if fmt == "csv":
            _emit(fmt, "", columns, rows)
            return
        cli = _app_parts()
        shown = rows if all_rows else [r for r in rows if r[0] == "merge" or r[4]]
        if shown:
            _emit(fmt, f"first sync of {mb} (first_sync = {result.mode})", columns, shown)
        counts = Table(title="what the first sync would do")
        counts.add_column("action")
        counts.add_column("records", justify="right")
        for action, n in sorted(result.counts().items()):
            counts.add_row(action, str(n))
        cli.console.print(counts)
        for warning in result.warnings:
            cli.console.print(f"warning: {warning}", markup=False, highlight=False)
        if result.held:
            cli.console.print(result.held, markup=False, highlight=False)
        cli.console.print("nothing was written (a plan reads only)")
