"""The producer loop: initial syncs, CRM poll, Exchange polls, publish; then sleep until a
doorbell rings or the poll interval passes.

Each step is isolated: an exception is logged with its step and mailbox and the loop carries on
(a dead Exchange server must not stop the CRM feed). Events created by a step are published
right after it; what the broker refused is tried again every ``redrive_check_s``; whatever is
lost anyway (crash, broker restart) is found by the re-drive, which is ``crmsync beat``'s
(producers.redrive.Redriver), not the loop's. Signals belong to the CLI: it sets ``loop.stop``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from crmsync.errors import MailboxUnavailable
from crmsync.testhooks import crash_point
from producers.crm_feed import CrmProducer
from producers.doorbells import NullDoorbell, exchange_source
from producers.exchange_feed import ExchangeProducer
from producers.ports import Doorbell, EventStore, MailboxHealth, Publisher

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_UNSENT_KEPT = 100_000


def utcnow() -> datetime:
    return datetime.now(UTC)


class ProducerLoop:
    def __init__(self, crm_producer: CrmProducer | None,
                 exchange_producers: Sequence[ExchangeProducer], publisher: Publisher,
                 store: EventStore, doorbell: Doorbell | None = None,
                 poll_interval_s: float = 5.0,
                 clock: Callable[[], datetime] = utcnow, *,
                 exchange_max_changes: int = 500, max_crm_batches_per_cycle: int = 20,
                 redrive_check_s: float = 5.0,
                 fallback_poll_s: float = 5.0,
                 first_sync_gate: Callable[[str], str | None] | None = None,
                 gate_recheck_s: float = 60.0, health: MailboxHealth | None = None,
                 unavailable_backoff_s: float = 5.0, unavailable_backoff_max_s: float = 300.0) -> None:
        self.crm_producer = crm_producer
        self.exchange_producers = list(exchange_producers)
        self.publisher = publisher
        self.store = store
        self.doorbell: Doorbell = doorbell or NullDoorbell()
        self.poll_interval_s = poll_interval_s
        #: The poll interval while the doorbell is not armed (a source without one, a lost
        #: subscription, a dropped LISTEN): the long safety-net poll only holds behind a doorbell.
        self.fallback_poll_s = fallback_poll_s
        self.clock = clock
        self.exchange_max_changes = exchange_max_changes
        self.max_crm_batches_per_cycle = max_crm_batches_per_cycle
        #: How often what the broker refused is sent again, also idle.
        self.redrive_check_s = redrive_check_s
        #: Set it (e.g. from a SIGTERM handler) to end ``run`` after the current step.
        self.stop = threading.Event()
        self._external_stop: threading.Event | None = None
        self._initial_done: set[str] = set()
        self._last_retry: datetime | None = None
        self._backlog = False
        #: Ids the broker refused lately, retried every cycle so a Redis that comes back is
        #: caught up within a poll interval (the re-drive covers them too).
        self._unsent: list[int] = []
        #: mailbox -> None to go ahead with its first sync, or why it waits (see crmsync.service.linking)
        self.first_sync_gate = first_sync_gate
        self.gate_recheck_s = gate_recheck_s
        self._gate_checked: dict[str, float] = {}   # held mailbox -> when it was last checked
        #: Mailboxes the Exchange adapter reported unavailable (MailboxUnavailable: access denied,
        #: folder missing): recorded in ``health`` for ``crmsync status``, and tried again after a
        #: back-off doubling from ``unavailable_backoff_s`` up to ``unavailable_backoff_max_s``
        #: while the other mailboxes carry on.
        self.health = health
        self.unavailable_backoff_s = unavailable_backoff_s
        self.unavailable_backoff_max_s = unavailable_backoff_max_s
        self._backoff: dict[str, tuple[float, float]] = {}   # mailbox -> (next try, monotonic; delay)
        self._recorded: set[str] | None = None   # mailboxes with a health row (None: not read yet)

    # ------------------------------------------------------------------ one cycle
    def _guarded(self, step: str, mailbox: str | None, fn: Callable[[], T], failed: T) -> T:
        """Run one step; log its failure with step and mailbox and return ``failed``."""
        try:
            return fn()
        except MailboxUnavailable as exc:
            self._unavailable(step, mailbox or exc.mailbox, exc)
            return failed
        except Exception as exc:  # noqa: BLE001 - one failing feed must not stop the others
            log.exception("producer.step_failed", step=step, mailbox=mailbox,
                          error=type(exc).__name__)
            return failed

    # ------------------------------------------------------------------ unavailable mailboxes
    def _unavailable(self, step: str, mailbox: str, exc: MailboxUnavailable) -> None:
        """Report the mailbox (log, health row) and set when it is tried again."""
        _, delay = self._backoff.get(mailbox, (0.0, 0.0))
        delay = min(max(delay * 2, self.unavailable_backoff_s), self.unavailable_backoff_max_s)
        self._backoff[mailbox] = (time.monotonic() + delay, delay)
        log.warning("producer.mailbox_unavailable", step=step, mailbox=mailbox, error=str(exc),
                    retry_in_s=round(delay, 1))
        if self.health is not None:
            try:
                self.health.mark_unavailable(mailbox, str(exc))
                if self._recorded is not None:
                    self._recorded.add(mailbox)
            except Exception as err:  # noqa: BLE001 - reporting must not stop the loop
                log.warning("producer.health_write_failed", mailbox=mailbox, error=type(err).__name__)

    def _backing_off(self, mailbox: str) -> bool:
        """Whether an unavailable mailbox waits for its next try."""
        found = self._backoff.get(mailbox)
        return found is not None and time.monotonic() < found[0]

    def _reachable(self, mailbox: str) -> None:
        """The mailbox answered: forget its back-off and remove its health row, if any."""
        was = self._backoff.pop(mailbox, None)
        if self.health is None:
            return
        recorded = self._recorded
        if was is None and (recorded is None or mailbox not in recorded):
            return
        try:
            self.health.mark_available(mailbox)
            if recorded is not None:
                recorded.discard(mailbox)
            log.info("producer.mailbox_available", mailbox=mailbox)
        except Exception as err:  # noqa: BLE001
            log.warning("producer.health_write_failed", mailbox=mailbox, error=type(err).__name__)

    def _read_health(self) -> None:
        """Which mailboxes have a health row (the workers write them too)."""
        if self.health is not None:
            try:
                self._recorded = set(self.health.unavailable())
            except Exception as err:  # noqa: BLE001
                log.warning("producer.health_read_failed", error=type(err).__name__)

    def _stopping(self) -> bool:
        return self.stop.is_set() or bool(self._external_stop and self._external_stop.is_set())

    def _publish(self, step: str, ids: list[int], mailbox: str | None) -> None:
        if not ids:
            return
        # The publisher swallows broker errors and sends in order; anything else is logged.
        sent = self._guarded(f"publish:{step}", mailbox,
                             lambda: self.publisher.publish(self.store, ids), 0)
        if sent < len(ids) and len(self._unsent) < MAX_UNSENT_KEPT:
            self._unsent.extend(ids[sent:])

    def _retry_unsent(self) -> None:
        if self._unsent:
            ids, self._unsent = self._unsent, []
            self._publish("retry", ids, None)

    def _held(self, mailbox: str) -> bool:
        """Whether the mailbox's first sync must wait (asked once, then every ``gate_recheck_s``
        while it waits). Its Exchange feed and CRM events wait with it."""
        crm = self.crm_producer
        if self.first_sync_gate is None or crm is None:
            return False
        if mailbox not in crm.held:
            done = self._guarded("crm-initial", mailbox, lambda: crm.initial_done(mailbox), None)
            if done is None:      # the state database cannot tell now: try again next cycle
                return True
            if done:
                return False
        else:
            last = self._gate_checked.get(mailbox)
            if (last is not None and time.monotonic() - last < self.gate_recheck_s
                    and mailbox not in self._backoff):   # an unavailable one: its back-off decides
                return True
        if self._backing_off(mailbox):     # its first-sync check found it unavailable: wait
            crm.held.add(mailbox)
            return True
        self._gate_checked[mailbox] = time.monotonic()
        gate = self.first_sync_gate

        def ask() -> str | None:
            return gate(mailbox)

        failed: str | None = f"mailbox {mailbox}: the first-sync check failed; retrying later"
        why = self._guarded("first-sync-gate", mailbox, ask, failed)
        if why != failed and mailbox in self._backoff:   # it answered the check this time
            self._reachable(mailbox)
        if why is None:
            crm.held.discard(mailbox)
            self._gate_checked.pop(mailbox, None)
            return False
        crm.held.add(mailbox)
        log.warning("producer.first_sync_held", mailbox=mailbox, reason=why)
        return True

    def _initial(self, mailbox: str) -> int:
        assert self.crm_producer is not None
        created = 0
        for ids in self.crm_producer.initial_batches(mailbox):  # publish while writing
            self._publish("crm-initial", ids, mailbox)
            created += len(ids)
            if ids:   # reliability tests: die between two batches of a first sync
                crash_point("during_initial_sync")
            if self._stopping():   # resumed at the next start; the dedup keys skip the done part
                return created
        self._initial_done.add(mailbox)
        return created

    def _exchange(self, producer: ExchangeProducer) -> int:
        created = 0
        for ids in producer.poll_batches(self.exchange_max_changes):  # publish page by page
            self._publish("exchange", ids, producer.mailbox)
            created += len(ids)
            if self._stopping():   # the sync state is stored with each page: resume from there
                break
        return created

    def run_once(self, only: set[str] | None = None) -> int:
        """One cycle; returns the number of events created. ``only``: the doorbell sources that
        rang — the Exchange mailboxes outside it are not read this time (None: read all). The
        CRM changelog, one query, is read every cycle."""
        created = 0
        self._backlog = False
        self._retry_unsent()
        crm = self.crm_producer
        if crm is not None:
            first = [mb for mb in crm.mailboxes if mb not in self._initial_done]
            first = [mb for mb in first if not self._held(mb)]
            for mailbox in first:
                created += self._guarded("crm-initial", mailbox,
                                         lambda mb=mailbox: self._initial(mb), 0)
                if self._stopping():     # a long initial sync must not delay a SIGTERM
                    return created
            # The rows the first sync covers (its stored position, never "whatever is pending
            # now"); before the feed below would turn them into events.
            if first and all(mb in self._initial_done for mb in crm.mailboxes if mb not in crm.held):
                self._guarded("crm-initial", None, crm.absorb_first_sync, 0)
            for batch in range(self.max_crm_batches_per_cycle):
                ids = self._guarded("crm", None, crm.poll, None)
                if ids is None:
                    break
                self._publish("crm", ids, None)
                created += len(ids)
                if not crm.more:
                    break
                self._backlog = batch == self.max_crm_batches_per_cycle - 1
        held = crm.held if crm is not None else set()
        for producer in self.exchange_producers:
            if producer.mailbox in held or (only is not None
                                            and exchange_source(producer.mailbox) not in only):
                continue
            if self._backing_off(producer.mailbox):
                continue
            done = self._guarded("exchange", producer.mailbox, lambda p=producer: self._exchange(p), None)
            if done is not None:
                self._reachable(producer.mailbox)
                created += done
        self._maybe_retry_unsent()
        return created

    def _maybe_retry_unsent(self) -> None:
        """Every ``redrive_check_s``: send again what the broker refused (the re-drive of
        what was sent and lost is crmsync beat's)."""
        now = self.clock()
        if self._last_retry is not None and (now - self._last_retry).total_seconds() < self.redrive_check_s:
            return
        self._last_retry = now
        self._read_health()
        self._retry_unsent()

    # ------------------------------------------------------------------ forever
    def run(self, stop: threading.Event | None = None) -> None:
        """Cycle until ``stop`` (or ``self.stop``) is set; between cycles sleep until the
        doorbell rings or the poll interval passes."""
        self._external_stop = stop
        self.doorbell.start()
        log.info("producer.started", mailboxes=[p.mailbox for p in self.exchange_producers],
                 poll_interval_s=self.poll_interval_s)
        try:
            only: set[str] | None = None
            while not self._stopping():
                self.run_once(only)
                only = None if self._backlog else self._sleep()
        finally:
            self.doorbell.stop()
            log.info("producer.stopped")

    def _sleep(self) -> set[str] | None:
        """Until the doorbell rings (returns the sources that rang) or the poll interval passes
        (returns None: read everything); sending again what the broker refused keeps its own
        few-second rhythm meanwhile."""
        started = time.monotonic()
        while not self._stopping():
            interval = self.poll_interval_s
            if not self.doorbell.armed():   # asked each time: a subscription may be lost meanwhile
                interval = min(interval, self.fallback_poll_s)
            remaining = started + interval - time.monotonic()
            if remaining <= 0:
                self.doorbell.take_sources()
                return None
            if self.doorbell.wait(min(remaining, 0.25)):
                return self.doorbell.take_sources()
            self._maybe_retry_unsent()
        return None
