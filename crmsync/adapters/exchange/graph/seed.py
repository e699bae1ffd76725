"""Put plain (unstamped) contacts into a folder over Graph, as a person would in Outlook on the
web: for ``crmsync demo --api graph`` (the EWS twin is ``crmsync.adapters.exchange.ews.seed``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

from crmsync.adapters.exchange.graph.client import GraphClient
from crmsync.adapters.exchange.graph.connect import user_path
from crmsync.adapters.exchange.graph.mapping import CRM_KEY_ID, SENSITIVITY_ID, SENSITIVITY_NAMES, create_body


def seed_contacts(client: GraphClient, mailbox: str, folder_id: str, rows: Iterable[Mapping[str, object]]) -> int:
    """Create one contact per row (canonical field names; ``private: True`` sets the MAPI
    sensitivity to Private) in ``$batch`` requests. Returns how many were created."""
    url = f"{user_path(mailbox)}/contactFolders/{quote(folder_id, safe='')}/contacts"
    parts = []
    for row in rows:
        body = create_body({k: v for k, v in row.items() if k != "private"}, "unused")  # type: ignore[misc]
        props = [p for p in body.pop("singleValueExtendedProperties") if p["id"] != CRM_KEY_ID]
        if row.get("private"):
            props.append({"id": SENSITIVITY_ID, "value": str(SENSITIVITY_NAMES.index("Private"))})
        if props:
            body["singleValueExtendedProperties"] = props
        parts.append({"method": "POST", "url": url, "body": body})
    answers = client.batch(parts, where=f"mailbox {mailbox}: seeding demo contacts", mailbox=mailbox)
    failed = [(status, body) for status, _, body in answers if status != 201]
    if failed:
        raise RuntimeError(f"mailbox {mailbox}: {len(failed)} demo contacts were not created "
                           f"(first: HTTP {failed[0][0]})")
    return len(answers)
