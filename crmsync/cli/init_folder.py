"""`crmsync init-folder`: the dedicated-folder way to a first sync without duplicates.

A new, empty contacts folder receives every CRM account (and secondary contact, per the
mailbox's ``secondary_contacts``) through the worker's own apply service, called in this process:
each record is created stamped with its CRM key and linked with its base, exactly as a first sync
would do it, so the producer's next sync of the mailbox finds nothing to write.
"""

from __future__ import annotations

import uuid

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crmsync.errors import ConfigError, CrmsyncError
from crmsync.ports import NewEvent

CHUNK = 200


def _same_path(a: str, b: str) -> bool:
    """Folder paths as Exchange compares them: per part, case-insensitively."""
    def parts(p: str) -> list[str]:
        return [x.strip().casefold() for x in p.split("/")]

    return parts(a) == parts(b)


def init_folder(
    mailbox: str = typer.Option(..., "--mailbox", "-m", help="the mailbox address"),
    folder: str = typer.Option(..., "--folder", help='the new folder under Contacts, e.g. "CRM Accounts" or "CRM/Accounts"; '
                               "it must be the mailbox's `folder` in the config file"),
) -> None:
    """Create a new, empty contacts folder and push every CRM account into it.

    Creates the folder and pushes every CRM account into it (and every
    secondary contact when the mailbox has secondary_contacts = true), with a progress bar;
    every contact is stamped with its CRM key and linked, so the sync of that folder that
    follows writes nothing and can never duplicate anything.

    The folder must be the one the mailbox syncs: first set `folder = "CRM Accounts"` in the
    mailbox's entry of the config file, then run this with the same --folder. A folder
    that exists and holds any contact is refused (nothing is written); an existing empty folder is
    used. A mailbox that already has links in the state database is refused too."""
    from crmsync.adapters.exchange.ews.connect import connect, find_folder, open_folder
    from crmsync.cli import app as cli
    from crmsync.service.apply import apply_events

    c = cli.ready_container()
    mbox = c.settings.effective(c.settings.mailbox(mailbox).address)
    address = mbox.address
    if not _same_path(mbox.folder, folder):
        raise ConfigError(f"mailbox {address} syncs folder {mbox.folder!r} (its [[mailbox]] folder in the config file), "
                          f"not {folder!r}: set folder = \"{folder}\" for this mailbox first, so the sync uses the "
                          "folder init-folder fills; nothing was written")
    if mbox.public_folder or mbox.folder_owner:
        raise ConfigError(f"mailbox {address}: init-folder fills a new folder under the mailbox's own Contacts; this "
                          f"mailbox syncs {mbox.folder_place} (a shared folder: link its contacts with `crmsync link "
                          "suggest` / `crmsync link auto`); nothing was written")
    if c.api(address) != "ews":
        raise ConfigError(f"mailbox {address}: init-folder works over EWS only (this mailbox uses api = "
                          f"{c.api(address)!r}); nothing was written")
    links = c.store.links_for_mailbox(address)
    if links:
        raise CrmsyncError(f"mailbox {address} already has {len(links)} link(s) in the state database: init-folder "
                           "is for a mailbox that was never synced; nothing was written")
    account = connect(c.settings.exchange_for(address), address)   # its own credentials, as the sync's
    existing = find_folder(account, folder)
    if existing is not None:
        count = existing.all().count()
        if count:
            raise CrmsyncError(f"mailbox {address}: folder {folder!r} exists and holds {count} item(s); init-folder "
                               "fills only a new or empty folder (pick a new name, or link the contacts with "
                               "`crmsync link suggest` / `crmsync link auto`); nothing was written")
    else:
        open_folder(account, folder, create=True)
        cli.console.print(f"created contacts folder {folder!r} in {address}")

    keys = [k for k in c.crm.all_keys() if mbox.secondary_contacts or not k.startswith("contact:")]
    svc = c.sync_services
    outcomes: dict[str, int] = {}
    errors: list[str] = []
    run = uuid.uuid4().hex
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=cli.err) as bar:
        task = bar.add_task(f"pushing into {folder}", total=len(keys))
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            ids = c.store.add_events([NewEvent("crm", address, "upsert", f"init-folder:{run}:{address}:{key}", crm_key=key)
                                      for key in chunk])
            c.store.mark_published(ids)
            result = apply_events(svc, ids)
            for outcome in result.outcomes.values():
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            errors += [f"event {eid}: {exc}" for eid, exc in result.errors.items()]
            bar.update(task, completed=start + len(chunk))
    summary = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())) or "nothing to push"
    cli.console.print(f"{address}: {summary} in folder {folder!r}")
    if errors:
        raise CrmsyncError(f"{len(errors)} record(s) failed (see `crmsync events list`); "
                           f"first: {errors[0]}")
    cli.console.print("every pushed contact is stamped and linked: the next sync of this folder writes nothing")
