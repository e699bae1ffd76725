"""The change feed of one mailbox's sync folder over Graph: ``contactFolders/{id}/contacts/delta``.

One ``changes`` call is one delta page. The sync state is the link Graph returned last: an
``@odata.nextLink`` while a round is under way (``more`` is true), then the round's
``@odata.deltaLink``. The producer commits it with the page's events, as it does the EWS
SyncFolderItems state, so a crash replays the page. Only ids and changeKeys are requested
(``$select=changeKey``), so nothing of a private contact reaches the event log.

``@removed`` entries are deletes. A 410 (``syncStateNotFound`` and friends: the token expired or
was reset) raises the EWS feed's ``SyncStateExpired``: the producer restarts from a full round,
whose entries are de-duplicated against the links by (item, changeKey). So does a stored state
that is not a delta link of ``graph_url`` (an EWS SyncFolderItems state after the mailbox moved
to Graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from crmsync.adapters.exchange.ews.feed import ExchangeChange, SyncStateExpired
from crmsync.adapters.exchange.graph.client import GraphClient, error_code, translate
from crmsync.adapters.exchange.graph.connect import user_path

__all__ = ["GraphFeed", "ExchangeChange", "SyncStateExpired"]


class GraphFeed:
    """Changes of one contact folder since a delta link (None: from the start)."""

    def __init__(self, client: GraphClient, mailbox: str, folder_id: str) -> None:
        self.client = client
        self.mailbox = mailbox
        self.folder_id = folder_id
        self._start = f"{user_path(mailbox)}/contactFolders/{quote(folder_id, safe='')}/contacts/delta"

    def changes(self, sync_state: str | None, max_changes: int = 500) -> tuple[Sequence[ExchangeChange], str, bool]:
        """(changes, new sync state, more) for one delta page after ``sync_state``."""
        where = f"mailbox {self.mailbox}: reading changes (contacts delta)"
        if sync_state and not sync_state.startswith(self.client.graph_url + "/"):
            # An EWS SyncFolderItems state (the mailbox moved from api = "ews"), or a link of
            # another graph_url: not ours to follow (the token goes with it). Start a new round.
            raise SyncStateExpired(f"mailbox {self.mailbox}: the stored sync state is not a Graph delta link of "
                                   f"{self.client.graph_url}; restart the folder's feed from the beginning")
        url = sync_state or self._start
        params = None if sync_state else {"$select": "changeKey"}
        resp = self.client.request("GET", url, where=where, mailbox=self.mailbox, params=params, allow=(410, 400),
                                   headers={"Prefer": f'odata.maxpagesize={max(1, max_changes)}, IdType="ImmutableId"'})
        body = resp.json() if resp.content else None
        if resp.status_code == 410 or (resp.status_code == 400 and sync_state
                                       and error_code(body) in ("syncStateNotFound", "SyncStateInvalid",
                                                                "resyncRequired", "ErrorInvalidSyncStateData")):
            raise SyncStateExpired(f"mailbox {self.mailbox}: the stored Graph delta link was refused "
                                   f"({error_code(body) or 'HTTP ' + str(resp.status_code)}); restart the folder's "
                                   "feed from the beginning (sync state None)")
        if resp.status_code >= 400:
            raise translate(resp.status_code, resp.headers, body, where, self.mailbox)
        out: list[ExchangeChange] = []
        for entry in body.get("value", []):
            if "@removed" in entry:
                out.append(ExchangeChange(item_id=entry["id"], change_key=None, op="delete"))
            else:
                out.append(ExchangeChange(item_id=entry["id"], change_key=entry.get("changeKey"), op="upsert"))
        if "@odata.nextLink" in body:
            return out, body["@odata.nextLink"], True
        return out, body.get("@odata.deltaLink") or url, False

    def close(self) -> None:
        """Nothing to release (no subscription): the feed is polled."""
