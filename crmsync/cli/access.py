"""``crmsync status``'s view of mailboxes crmsync cannot reach now (access denied, folder missing)."""

from __future__ import annotations

from rich.table import Table


def unavailable_view(c) -> tuple[Table | None, list[str]]:
    """(a table of the unavailable mailboxes or None, one problem line each for --check)."""
    found = c.mailbox_health.unavailable()
    if not found:
        return None, []
    table = Table(title="mailboxes unavailable (retried with back-off; the others carry on)")
    for column in ("mailbox", "since", "last try", "error"):
        table.add_column(column, overflow="fold")
    problems = []
    for mailbox, row in sorted(found.items()):
        since = f"{row['since']:%Y-%m-%d %H:%M:%S} UTC" if row["since"] else "?"
        last = f"{row['updated_at']:%Y-%m-%d %H:%M:%S}" if row["updated_at"] else "?"
        table.add_row(mailbox, since, last, row["error"])
        problems.append(f"{mailbox}: unavailable since {since}: {row['error']}")
    return table, problems
