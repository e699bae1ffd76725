"""An administrator's edit of the links table: removing a link that was never synced.

Kept apart from the sync's own store (``sqlalchemy_store``): only ``crmsync link remove`` uses it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, delete, or_

from crmsync.adapters.database import write_tx
from schemas.state_tables import links


class SqlLinkEditor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def remove_unsynced_link(self, mailbox: str, crm_key: str) -> bool:
        """Delete the (mailbox, crm_key) link iff it was never synced and no worker holds its
        lease; True when a row was deleted."""
        now = datetime.now(UTC)
        with write_tx(self.engine) as conn:
            got = conn.execute(delete(links).where(
                links.c.mailbox == mailbox, links.c.crm_key == crm_key,
                links.c.base_json.is_(None), links.c.synced_at.is_(None),
                or_(links.c.lease_token.is_(None), links.c.lease_until.is_(None), links.c.lease_until <= now)))
            return got.rowcount == 1


def links_page(engine: Engine, mailbox: str, after_id: int = 0, limit: int = 50,
               key_prefix: str = "") -> list[dict[str, object]]:
    """One page of a mailbox's links, by id (keyset pagination: fast at any depth), for the
    console: id, crm_key, item_id, whether synced, private, deleted, synced_at."""
    from sqlalchemy import select

    from crmsync.adapters.database import read_tx

    stmt = (select(links.c.id, links.c.crm_key, links.c.item_id, links.c.base_json.is_not(None).label("synced"),
                   links.c.private, links.c.deleted, links.c.synced_at)
            .where(links.c.mailbox == mailbox, links.c.id > after_id).order_by(links.c.id).limit(limit))
    if key_prefix:
        stmt = stmt.where(links.c.crm_key >= key_prefix, links.c.crm_key < key_prefix + "\uffff")
    with read_tx(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]
