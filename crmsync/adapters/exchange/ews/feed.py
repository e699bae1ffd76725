"""The Exchange change feed of one mailbox's sync folder: SyncFolderItems pages + a doorbell.

One ``changes`` call is one SyncFolderItems request: the caller (the producer) turns the
changes into event rows and commits them *with* the returned sync state, then asks again while
``more`` is true (DESIGN §5). Only ids travel: no field of a contact is requested here, so
nothing of a private contact can reach the event log through the feed.

exchangelib's ``folder.sync_items`` loops over every page itself and only exposes the new state
after the generator ends; we drive its ``SyncFolderItems`` service for exactly one page so the
state can be stored per page.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal

import structlog
from exchangelib import Account, Contact
from exchangelib.errors import (
    ErrorExpiredSubscription,
    ErrorInvalidSubscription,
    ErrorInvalidSyncStateData,
    ErrorInvalidWatermark,
    ErrorSubscriptionNotFound,
)
from exchangelib.items import ID_ONLY
from exchangelib.services import GetEvents, GetStreamingEvents, SubscribeToStreaming, SyncFolderItems

from crmsync.adapters.exchange.ews.faults import ews_errors
from crmsync.errors import CrmsyncError

log = structlog.get_logger(__name__)

_DOORBELL_EVENTS = ("CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "CopiedEvent")
_SUBSCRIPTION_MINUTES = 10  # the server drops a pull subscription not polled for this long
#: One GetStreamingEvents request stays open this long (Exchange allows 1-30), then is made again.
#: exchangelib's read timeout is this plus a minute, so a silently dead connection is noticed then.
STREAM_CONNECTION_MINUTES = 5
_SUBSCRIPTION_LOST = (ErrorSubscriptionNotFound, ErrorInvalidSubscription, ErrorInvalidWatermark,
                      ErrorExpiredSubscription)
_POOL_LOCK = threading.Lock()

#: How the Exchange doorbell hears of changes (``[sync] notifications``).
Notifications = Literal["streaming", "pull", "poll"]


@dataclass(frozen=True)
class ExchangeChange:
    """One change reported by SyncFolderItems: an item created/updated ("upsert") or deleted."""

    item_id: str
    change_key: str | None  # None for a delete
    op: Literal["upsert", "delete"]


class SyncStateExpired(CrmsyncError):
    """The stored sync state is refused by the server: restart from None (a full listing)."""


class ExchangeFeed:
    """Changes of one folder since a sync state, and an optional doorbell."""

    def __init__(self, account: Account, folder, notifications: Notifications = "pull", *,
                 stream_minutes: int = STREAM_CONNECTION_MINUTES, mailbox: str | None = None) -> None:
        if notifications not in ("streaming", "pull", "poll"):
            raise ValueError(f"notifications {notifications!r}: expected 'streaming', 'pull' or 'poll'")
        self.account = account
        self.folder = folder
        #: The [[mailbox]] this feed serves (errors name it); the account's own address unless
        #: the folder is another mailbox's (``folder_owner``: the account is then the owner's).
        self.mailbox: str = mailbox or account.primary_smtp_address
        self.notifications = notifications
        self._subscription: str | None = None
        self._watermark: str | None = None
        self._stream: _StreamingDoorbell | None = None
        self._stream_minutes = stream_minutes
        self._woken = threading.Event()

    def changes(self, sync_state: str | None, max_changes: int = 500) -> tuple[list[ExchangeChange], str, bool]:
        """(changes, new sync state, more) for one page after ``sync_state`` (None: from the start).

        Creates and updates are both "upsert" (the worker re-reads anyway). Store the new
        state only after the events are committed; call again at once while ``more``.
        Raises SyncStateExpired when the server no longer accepts ``sync_state``.
        """
        svc = SyncFolderItems(account=self.account)
        out: list[ExchangeChange] = []
        with ews_errors(self.mailbox, "reading changes (SyncFolderItems)"):
            try:
                for res in svc.call(folder=self.folder, shape=ID_ONLY, additional_fields=set(),
                                    sync_state=sync_state, ignore=None,
                                    max_changes_returned=max_changes, sync_scope=None):
                    if isinstance(res, Exception):
                        raise res
                    change_type, item = res
                    if change_type in (svc.CREATE, svc.UPDATE):
                        if not isinstance(item, Contact):
                            continue  # a distribution list or other item type: not ours to sync
                        out.append(ExchangeChange(item_id=item.id, change_key=item.changekey, op="upsert"))
                    elif change_type == svc.DELETE:
                        out.append(ExchangeChange(item_id=item.id, change_key=None, op="delete"))
                    # read-flag changes do not concern contacts
            except ErrorInvalidSyncStateData:
                raise SyncStateExpired(
                    f"mailbox {self.mailbox}: the stored Exchange sync state was refused; "
                    "restart the folder's feed from the beginning (sync state None)"
                ) from None
        new_state = svc.sync_state
        more = not svc.includes_last_item_in_range
        if new_state is None:  # defensive: a reply without SyncState cannot advance the cursor
            new_state, more = sync_state or "", False
        return out, new_state, bool(more)

    def _subscribe(self) -> None:
        self._subscription, self._watermark = self.folder.subscribe_to_pull(
            event_types=_DOORBELL_EVENTS, timeout=_SUBSCRIPTION_MINUTES)
        log.info("exchange.subscribed", mailbox=self.mailbox, kind="pull")

    def _get_events(self):
        """One GetEvents call. exchangelib's ``folder.get_events`` repeats the first watermark
        while MoreEvents is true; here each call names the watermark of the last event seen, so
        nothing is acknowledged before it was read, whichever way the server counts."""
        return GetEvents(account=self.account).get(subscription_id=self._subscription,
                                                    watermark=self._watermark)

    def wait_for_change(self, timeout_s: float, poll_s: float = 1.0) -> bool:
        """Block up to ``timeout_s`` for a change in the folder: a streaming or a pull
        subscription, as ``notifications`` says ("poll": no doorbell, this raises).

        True when the caller should read ``changes``: the server reported an event, or the
        subscription was (re)made, since a change before that has no event to report. The
        subscription is made *before* returning True, so whatever happens after the caller's
        read is reported by it. A lost subscription (expired, dropped by the server) is made
        again at once. The truth stays SyncFolderItems; the doorbell only says "look now".
        """
        if self.notifications == "poll":
            raise CrmsyncError(f"mailbox {self.mailbox}: notifications = 'poll' has no doorbell")
        if self.notifications == "streaming":
            if self._stream is None:
                self._stream = _StreamingDoorbell(self, self._stream_minutes)
            return self._stream.wait(timeout_s)
        deadline = time.monotonic() + max(0.0, timeout_s)
        with ews_errors(self.mailbox, "waiting for changes (pull subscription)"):
            if self._subscription is None:
                self._subscribe()
                return True
            while True:
                try:
                    notification = self._get_events()
                except _SUBSCRIPTION_LOST as exc:
                    log.warning("exchange.subscription_lost", mailbox=self.mailbox,
                                error=type(exc).__name__, action="subscribing again")
                    self._subscription = None
                    self._subscribe()
                    return True  # events may have been missed: let the caller look
                rang = False
                for event in notification.events:
                    self._watermark = getattr(event, "watermark", None) or self._watermark
                    rang |= type(event).__name__ != "StatusEvent"
                if rang:
                    return True
                if notification.more_events:
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._woken.wait(min(poll_s, left)):
                    self._woken.clear()
                    return False

    def wake(self) -> None:
        """End a ``wait_for_change`` under way now (the producer is stopping: a SIGTERM must not
        wait out the subscription's long wait). A pull wait returns False; a streaming one
        returns True (one harmless extra read)."""
        self._woken.set()
        stream = self._stream
        if stream is not None:
            stream.wake()

    def close(self) -> None:
        """Drop the doorbell's subscription (best effort)."""
        if self._stream is not None:
            self._stream.close()
        if self._subscription is not None:
            sub, self._subscription = self._subscription, None
            try:
                self.folder.unsubscribe(sub)
            except Exception as exc:  # the subscription expires on its own anyway
                log.info("exchange.unsubscribe_failed", mailbox=self.mailbox, error=type(exc).__name__)


class _StreamingDoorbell:
    """A streaming subscription on the feed's folder, read by a thread of its own.

    The stream runs on an ``Account`` of its own (the subscription and its stream share one
    server affinity cookie), and the shared exchangelib ``Protocol`` gets one more pooled
    connection for it, so the long ``GetStreamingEvents`` request never waits for, nor makes
    wait, a ``SyncFolderItems`` or a write of this process. Each request stays open
    ``minutes`` and is made again when the server closes it; a subscription the server lost or
    let expire is made again, and every (re)subscription rings, since a change before it has no
    event. ``wait`` raises the stream's last error while it is failing, so the doorbell reports
    itself not armed and the loop polls often meanwhile.
    """

    def __init__(self, feed: ExchangeFeed, minutes: int) -> None:
        self.feed = feed
        self.mailbox = feed.mailbox
        self.minutes = minutes
        base = feed.account
        self.account = Account(primary_smtp_address=base.primary_smtp_address, access_type=base.access_type,
                               config=base.protocol.config, autodiscover=False,
                               default_timezone=base.default_timezone)
        self.subscription: str | None = None
        self.error: Exception | None = None
        self._rang = threading.Event()
        self._stopping = threading.Event()
        protocol = self.account.protocol
        with _POOL_LOCK:   # one more connection in the shared pool, held by this stream
            protocol.max_connections = protocol.max_connections + 1
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ews-stream-{self.mailbox}")
        self._thread.start()

    def wake(self) -> None:
        """End a ``wait`` under way (see ExchangeFeed.wake)."""
        self._rang.set()

    def wait(self, timeout_s: float) -> bool:
        if self._rang.wait(max(0.0, timeout_s)):
            self._rang.clear()
            return True
        if self.error is not None:
            raise self.error
        return False

    def _subscribe(self) -> None:
        self.subscription = SubscribeToStreaming(account=self.account).get(
            folders=[self.feed.folder], event_types=_DOORBELL_EVENTS)
        log.info("exchange.subscribed", mailbox=self.mailbox, kind="streaming")

    def _read_stream(self) -> None:
        """One GetStreamingEvents request, until the server closes it (ConnectionStatus Closed)."""
        svc = GetStreamingEvents(account=self.account)
        for notification in svc.call(subscription_ids=[self.subscription], connection_timeout=self.minutes):
            if isinstance(notification, Exception):
                raise notification
            self.error = None
            if any(type(e).__name__ != "StatusEvent" for e in notification.events):
                self._rang.set()

    def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                with ews_errors(self.mailbox, "waiting for changes (streaming subscription)"):
                    if self.subscription is None:
                        self._subscribe()
                        self.error, delay = None, 1.0
                        self._rang.set()
                    opened = time.monotonic()
                    try:
                        self._read_stream()
                    except _SUBSCRIPTION_LOST as exc:
                        log.warning("exchange.subscription_lost", mailbox=self.mailbox, kind="streaming",
                                    error=type(exc).__name__, action="subscribing again")
                        self.subscription = None
                        continue
                self.error, delay = None, 1.0
                if time.monotonic() - opened < 1.0:   # a server that closes at once: not a busy loop
                    self._stopping.wait(1.0)
            except Exception as exc:  # noqa: BLE001 - the thread never dies; ``wait`` reports it
                if self._stopping.is_set():
                    return
                self.error = exc
                # Subscribe again next time: a stream that opens sends nothing to say it works,
                # a Subscribe that works does (and rings, for whatever happened meanwhile). The
                # old subscription, if the server still has it, expires unused.
                self.subscription = None
                log.warning("exchange.stream_failed", mailbox=self.mailbox, error=type(exc).__name__,
                            detail=str(exc)[:200], retry_in_s=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def close(self, join_s: float = 2.0) -> None:
        """Unsubscribe, which makes the server close the open stream, and let the thread end
        (a daemon thread: one that is still reading then ends with the process)."""
        self._stopping.set()
        sub, self.subscription = self.subscription, None
        if sub is not None:
            try:
                self.feed.folder.unsubscribe(sub)
            except Exception as exc:  # the subscription expires on its own anyway
                log.info("exchange.unsubscribe_failed", mailbox=self.mailbox, error=type(exc).__name__)
        self._thread.join(join_s)
