"""Put plain (unlinked) contacts into a folder, as a person would in Outlook: for the demo."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exchangelib import Contact

from crmsync.adapters.exchange.ews.mapping import contact_kwargs


def seed_contacts(folder, rows: Iterable[Mapping[str, object]]) -> int:
    """Create one contact per row (canonical field names; ``private: True`` sets Sensitivity
    Private). Returns how many were created."""
    items = []
    for row in rows:
        values = {k: v for k, v in row.items() if k != "private"}
        kwargs = contact_kwargs(values)
        if row.get("private"):
            kwargs["sensitivity"] = "Private"
        items.append(Contact(folder=folder, account=folder.account, **kwargs))
    folder.account.bulk_create(folder=folder, items=items)
    return len(items)
