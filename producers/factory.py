"""Wiring the producer loop from settings and adapters (used by the CLI and the tests).

The adapters come in from the composition root (``crmsync.bootstrap``); this module only knows
which doorbell fits which database and how the settings map onto the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import make_url

from producers.crm_feed import CrmProducer
from producers.doorbells import (
    CallbackDoorbell,
    CombinedDoorbell,
    NullDoorbell,
    PostgresListenDoorbell,
    SqliteFileDoorbell,
    _Bell,
    exchange_source,
)
from producers.exchange_feed import ExchangeProducer
from producers.loop import ProducerLoop
from producers.ports import ChangelogPort, CrmKeysPort, EventStore, FeedPort, MailboxHealth, Publisher
from producers.publisher import CeleryPublisher


def crm_doorbell(crm_url: str) -> _Bell:
    """Watchdog on a SQLite file, LISTEN/NOTIFY on PostgreSQL, nothing elsewhere (poll only)."""
    url = make_url(crm_url)
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        return SqliteFileDoorbell(url.database)
    if backend == "postgresql":
        return PostgresListenDoorbell(crm_url)
    return NullDoorbell()


def build_loop(settings: Any, *, changelog: ChangelogPort, crm: CrmKeysPort, store: EventStore,
               feeds: Mapping[str, FeedPort], publisher: Publisher | None = None,
               doorbell: _Bell | None = None, crm_url: str | None = None,
               first_sync_gate: Callable[[str], str | None] | None = None,
               health: MailboxHealth | None = None) -> ProducerLoop:
    """A ``ProducerLoop`` for every mailbox of ``settings`` (``crmsync.config.Settings``).

    ``feeds`` maps a mailbox address to its Exchange feed (mailboxes without one get no Exchange
    poll). ``crm_url`` is the CRM URL with its password (defaults to ``settings.crm.dsn()``).
    Feeds with a ``wait_for_change(timeout_s)`` also ring the doorbell, unless
    ``sync.notifications`` is "poll". ``first_sync_gate`` (mailbox -> None or why it waits) is
    asked before each mailbox's first sync. ``health`` records the mailboxes found unavailable;
    they are tried again with back-off up to ``sync.retry_backoff_max_s``.
    """
    enabled = settings.enabled_mailboxes()     # a disabled mailbox gets no events at all
    mailboxes = [m.address for m in enabled]
    sync = settings.sync
    crm_producer = CrmProducer(changelog, crm, store, mailboxes,
                               fan_out_contacts=True, batch_size=sync.batch_size,
                               without_contacts=[m.address for m in enabled if not m.secondary_contacts],
                               with_inactive=[m.address for m in enabled if not settings.effective(m.address).only_active])
    exchange = [ExchangeProducer(mb, feeds[mb], store) for mb in mailboxes if mb in feeds]
    if doorbell is None:
        def rings(feed) -> bool:
            return callable(getattr(feed, "wait_for_change", None)) and sync.notifications != "poll"

        bells: list[_Bell] = [crm_doorbell(crm_url or settings.crm.dsn())]
        bells += [CallbackDoorbell(feed.wait_for_change, name=exchange_source(mb),
                                   wake=getattr(feed, "wake", None))
                  for mb, feed in feeds.items() if mb in mailboxes and rings(feed)]
        if any(not rings(feed) for mb, feed in feeds.items() if mb in mailboxes):
            bells.append(NullDoorbell())   # a feed without a doorbell: never poll rarely
        doorbell = bells[0] if len(bells) == 1 else CombinedDoorbell(*bells)
    return ProducerLoop(crm_producer, exchange, publisher or CeleryPublisher.from_settings(settings),
                        store, doorbell, poll_interval_s=sync.poll_interval_s,
                        exchange_max_changes=sync.batch_size,
                        first_sync_gate=first_sync_gate,
                        redrive_check_s=sync.redrive_check_s, health=health,
                        unavailable_backoff_s=min(5.0, sync.retry_backoff_max_s),
                        unavailable_backoff_max_s=sync.retry_backoff_max_s)
