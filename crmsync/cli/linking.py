"""`crmsync link suggest|search|add|remove|list|auto|rebuild` and `crmsync plan`: the first sync
without duplicates.

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
                          policy=MatchPolicy(region=settings.sync.phone_region), with_contacts=with_contacts,
                          sync_policy_for=container.policy_for)


def first_sync_gate(container):
    """mailbox -> None (go ahead) or why its first sync waits, per ``[sync] first_sync``."""
    service = linking_service(container)
    settings = container.settings
    return lambda mailbox: service.first_sync_gate(mailbox, settings.sync.first_sync,
                                                   settings.mailbox(mailbox).first_sync)


def first_sync_waiting(container) -> list[str]:
    """Lines for `crmsync status`: the mailboxes whose first sync the producer holds, and why."""
    service = linking_service(container)
    return [f"{mb.address}: {why}" for mb in container.settings.mailboxes
            if (why := service.waiting(mb.address))]


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


def _writes_summary(row) -> str:
    """A plan row's field writes, for the table and CSV: "CRM: a, b; Exchange: c"."""
    parts = [f"{side}: {', '.join(writes)}" for side, writes in (("CRM", row.to_crm), ("Exchange", row.to_exchange))
             if writes]
    return "; ".join(parts)


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

MAILBOX_HELP = "the mailbox (default: the only one configured)"
FORMAT_HELP = "table (default, for people) | json | csv (for scripts)"

link_app = typer.Typer(
    name="link",
    help="Link CRM records and Outlook contacts that are the same person, before the first sync "
         "(or after a lost state database), so the sync merges them instead of creating each twice.\n\n"
         "suggest: candidate pairs with scores. search: find an Outlook contact. add / remove / list: "
         "links by hand. auto: link the unambiguous pairs. rebuild: links again from stamps and exact "
         "e-mail matches after the state database was lost.",
    no_args_is_help=True,
)


def _mailbox_option(required: bool = False):
    if required:
        return typer.Option(..., "--mailbox", "-m", help="the mailbox")
    return typer.Option(None, "--mailbox", "-m", help=MAILBOX_HELP)


def _format_option():
    return typer.Option("table", "--format", help=FORMAT_HELP)


def _link_state(link) -> str:
    if link.private:
        return "private (unlinked)"
    if link.deleted:
        return "deleted"
    if link.item_id is None:
        return "contact not created yet"
    return "synced" if link.base is not None else "linked, not synced yet"


@link_app.command("suggest")
def suggest(
    mailbox: str | None = _mailbox_option(),
    min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="list pairs scoring at least this (0..1)"),
    fmt: str = _format_option(),
) -> None:
    """Candidate pairs (CRM record, Outlook contact) with score and agreeing/differing fields.

    Pairs of an unlinked CRM record and an unlinked Outlook contact that look like the same
    person, best first, with their score (1.0: the contact is stamped with the CRM key), the
    fields that agree and disagree, and whether `crmsync link auto` at this score would link
    the pair. Reads only."""
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


@link_app.command("search")
def search(
    text: str = typer.Argument(..., metavar="TEXT", help="part of a name or company, an e-mail address, or a phone number"),
    mailbox: str = _mailbox_option(required=True),
    fmt: str = _format_option(),
) -> None:
    """Find an Outlook contact by name, company, e-mail or phone.

    Asks the sync folder's own search, at most 200 contacts (phones in any format: "415 555-1020" finds
    "+1 (415) 555 1020"; see the README for what Graph finds), to link it by hand with `crmsync
    link add CRM_KEY ITEM_ID`. Shows whether each contact is linked already. Reads only."""
    _check_format(fmt)
    from crmsync.service.linking import display_name

    c = _app_parts().ready_container()
    mb = _mailbox(c, mailbox)
    with _progress(fmt == "table") as progress:
        hits = linking_service(c).search(mb, text, progress)
    rows = [[h.item.item_id, display_name(h.item.record), h.item.record.email or "",
             h.item.record.phone_mobile or h.item.record.phone_business or "", ", ".join(h.matched),
             h.linked_to or ""] for h in hits]
    _emit(fmt, f"contacts in {mb} matching {text!r}", ["item_id", "name", "email", "phone", "matched", "linked_to"],
          rows)


@link_app.command("add")
def add(
    crm_key: str = typer.Argument(..., help="the CRM record, e.g. account:A-1 or contact:7"),
    item_id: str = typer.Argument(..., help="the Outlook contact's ItemId (from `link suggest` or `link search`)"),
    mailbox: str | None = _mailbox_option(),
    fmt: str = _format_option(),
) -> None:
    """Link a CRM record and an Outlook contact by hand.

    For a CRM record and an Outlook contact that are the same person: the next sync merges
    the two (a two-way merge by conflict_policy) and stamps the contact with the CRM key, instead
    of creating each on the other side. Refused, with the reason, when either is linked already,
    the contact is private or stamped with another record, or either does not exist."""
    _check_format(fmt)
    c = _app_parts().ready_container()
    mb = _mailbox(c, mailbox)
    link = linking_service(c).link(mb, crm_key, item_id)
    _emit(fmt, f"linked in {mb}: the next sync merges them", ["result", "mailbox", "crm_key", "item_id"],
          [["linked", mb, link.crm_key, link.item_id]])


@link_app.command("remove")
def remove(
    key_or_item: str = typer.Argument(..., metavar="CRM_KEY|ITEM_ID", help="either side of the link"),
    mailbox: str | None = _mailbox_option(),
    fmt: str = _format_option(),
) -> None:
    """Remove a link that was not synced yet.

    Links made by `link add`, `link auto` or `link rebuild`).
    A synced pair is refused: both sides hold the merged record already."""
    _check_format(fmt)
    c = _app_parts().ready_container()
    mb = _mailbox(c, mailbox)
    gone = linking_service(c).unlink(mb, key_or_item)
    _emit(fmt, f"removed in {mb}", ["result", "mailbox", "crm_key", "item_id"],
          [["removed", mb, gone.crm_key, gone.item_id]])


@link_app.command("list")
def list_links(
    mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="one mailbox (default: every configured one)"),
    fmt: str = _format_option(),
) -> None:
    """List the links of a mailbox (or of every mailbox).

    Per link: CRM key, ItemId, and whether the pair was
    synced or is linked and waiting for its first merge. Reads the state database only."""
    _check_format(fmt)
    c = _app_parts().ready_container()
    boxes = [_mailbox(c, mailbox)] if mailbox else [m.address for m in c.settings.require_mailboxes()]
    rows = []
    for mb in boxes:
        for link in sorted(c.store.links_for_mailbox(mb), key=lambda x: x.crm_key):
            rows.append([mb, link.crm_key, link.item_id or "", _link_state(link),
                         link.synced_at.isoformat() if link.synced_at else ""])
    _emit(fmt, f"links ({len(rows)})", ["mailbox", "crm_key", "item_id", "state", "synced_at"], rows)


@link_app.command("auto")
def auto(
    min_score: float = typer.Option(..., "--min-score", help=f"the lowest score linked (0..1; {DEFAULT_MIN_SCORE} "
                                    "is a good start)"),
    mailbox: str | None = _mailbox_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would be linked, link nothing"),
    fmt: str = _format_option(),
) -> None:
    """Link every unambiguous pair scoring --min-score or more.

    A record with two
    candidates close in score, or a contact claimed by two records, is never linked and is
    listed as "needs a person" (link it with `link add`)."""
    _check_format(fmt)
    c = _app_parts().ready_container()
    mb = _mailbox(c, mailbox)
    cli = _app_parts()
    with _progress(fmt == "table") as progress:
        result = linking_service(c).auto_link(mb, min_score, dry_run=dry_run, progress=progress)
    verb = "would link" if dry_run else "linked"
    rows = [[verb, x.crm_key, x.exchange_key, f"{x.score:.4f}", _evidence(x, True)] for x in result.linked]
    rows += [["failed", x.crm_key, x.exchange_key, f"{x.score:.4f}", why] for x, why in result.failed]
    rows += [["needs a person", n.key if n.side == "crm" else "", n.key if n.side == "exchange" else "",
              f"{n.candidates[0].score:.4f}", n.detail] for n in result.needs_person]
    _emit(fmt, f"link auto in {mb} (score >= {min_score})", ["result", "crm_key", "item_id", "score", "why"], rows)
    if fmt == "table":
        cli.console.print(f"{len(result.linked)} pair(s) {verb}, {len(result.needs_person)} record(s) need a "
                          f"person, {len(result.failed)} failed")


@link_app.command("rebuild")
def rebuild(
    mailbox: str = _mailbox_option(required=True),
    fmt: str = _format_option(),
) -> None:
    """Rebuild links after a lost state database, from stamps and exact e-mail matches.

    After a lost state database or a re-created mailbox: link again every certain pair, a
    contact stamped with a CRM key (every synced contact carries one) or the same e-mail address
    no one else shares, one-to-one. The next sync merges two equal records and writes nothing.
    What could not be linked is listed with the reason (link it with `link add` if needed)."""
    _check_format(fmt)
    c = _app_parts().ready_container()
    mb = _mailbox(c, mailbox)
    cli = _app_parts()
    with _progress(fmt == "table") as progress:
        result = linking_service(c).rebuild(mb, progress)
    rows = [["linked", x.crm_key, x.exchange_key, "stamp" if x.certain else "exact e-mail"] for x in result.linked]
    rows += [["not linked", key, item, why] for key, item, why in result.left]
    _emit(fmt, f"link rebuild in {mb}", ["result", "crm_key", "item_id", "how"], rows)
    if fmt == "table":
        cli.console.print(f"{len(result.linked)} link(s) rebuilt, {len(result.left)} record(s) not linked")


def register(app: typer.Typer) -> None:
    """Add `crmsync link ...`, `crmsync plan` and `crmsync init-folder` to the ``crmsync`` app."""
    from crmsync.cli.init_folder import init_folder

    app.add_typer(link_app, name="link")
    app.command("init-folder")(init_folder)

    @app.command()
    def sync(
        mailbox: str | None = typer.Option(None, "--mailbox", "-m", help="the mailbox (default: the only one)"),
        approve_plan: bool = typer.Option(False, "--approve-plan",
                                          help="let the mailbox's first sync start, as `crmsync plan` shows it"),
        min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="score of a probable duplicate"),
    ) -> None:
        """Approve a mailbox's first sync after reviewing `crmsync plan`: a folder that is not
        empty and was never synced waits for this by default (unless its [[mailbox]] has
        first_sync = "auto"). The running producer starts the sync at its next check. Refused while the plan
        is held by probable duplicates. (Syncing itself is the producer's job.)"""
        if not approve_plan:
            raise CrmsyncError("crmsync sync: nothing to do without --approve-plan (the producer, `crmsync "
                               "producer` or `crmsync run`, syncs every mailbox)")
        c = _app_parts().ready_container()
        mb = _mailbox(c, mailbox)
        result = linking_service(c).approve_first_sync(mb, c.settings.sync.first_sync, min_score)
        counts = ", ".join(f"{n} {action}" for action, n in sorted(result.counts().items())) or "nothing to do"
        _app_parts().console.print(f"first sync of {mb} approved ({counts}); the producer starts it at its "
                                   "next check (within a minute)", markup=False, highlight=False)

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
        columns = ["action", "crm_key", "item_id", "name", "note", "writes"]
        rows = [[r.action, r.crm_key, r.item_id, r.name, r.note, _writes_summary(r)] for r in result.rows]
        if fmt == "json":
            cli = _app_parts()
            records = [{**dict(zip(columns[:5], row[:5], strict=True)), "to_crm": r.to_crm, "to_exchange": r.to_exchange}
                       for row, r in zip(rows, result.rows, strict=True)]
            cli.console.print_json(json.dumps({
                "mailbox": mb, "first_sync": result.mode, "held": result.held, "counts": result.counts(),
                "warnings": list(result.warnings), "records": records}))
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
