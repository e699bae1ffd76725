"""Publish event ids as Celery tasks: event rows first, publish second, mark published third.

Redis only carries messages (DESIGN.md §4): when the broker is down the unsent events simply
stay ``pending`` in the state database and the re-drive sends them later, so a broker outage is
logged and never raised into the producer loop. Publishing is bounded in time (a couple of quick
retries per call, short socket timeouts) so a dead Redis costs seconds per cycle, not per message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url, url_to_parts

from crmsync import metrics
from crmsync.testhooks import crash_point
from schemas.events import APPLY_EVENTS_TASK, QUEUE_PREFIX, EventBatchMessage, queue_for_source

if TYPE_CHECKING:  # pragma: no cover
    from celery import Celery

    from producers.ports import EventStore

log = structlog.get_logger(__name__)

#: Events per task message: the worker applies them as one batch (bulk reads and creates).
TASK_BATCH = 100

#: Mark rows published after every this many sends, so a broker failure mid-way re-sends little.
MARK_EVERY = 500


#: Longest ``kwargsrepr`` (what Flower shows as a task's arguments) a message carries.
REPR_MAX = 400


def _capped(items: list[str], room: int) -> str:
    """``[a, b, ...]`` within ``room`` characters, ending in ``+N more`` when cut."""
    shown: list[str] = []
    for n, item in enumerate(items):
        rest = len(items) - n - 1
        tail = f", +{rest} more" if rest else ""
        if len(", ".join([*shown, item])) + len(tail) + 2 > room and shown:
            return "[" + ", ".join(shown) + f", +{len(items) - n} more]"
        shown.append(item)
    return "[" + ", ".join(shown) + "]"


def task_repr(event_ids: Sequence[int], rows: Mapping[int, Any], limit: int = REPR_MAX) -> str:
    """What Flower shows for an apply task: ``mailbox=a@x events=[12, 13] records=[account:A-1,
    ...]``, at most ``limit`` characters. Only the mailbox, event ids and CRM keys (the CRM's
    own identifiers): never a name, an address of a contact or an Exchange item id, so nothing of a
    private contact appears (its event has no CRM key)."""
    found = [rows[i] for i in event_ids if i in rows]
    mailboxes = sorted({str(r.mailbox) for r in found if getattr(r, "mailbox", None)})
    keys = list(dict.fromkeys(str(r.crm_key) for r in found if getattr(r, "crm_key", None)))
    head = (f"mailbox={mailboxes[0]} " if len(mailboxes) == 1
            else f"mailboxes={_capped(mailboxes, limit // 4)} " if mailboxes else "")
    text = head + f"events={_capped([str(i) for i in event_ids], max(40, (limit - len(head)) // 2))}"
    if keys:
        text += f" records={_capped(keys, max(40, limit - len(text) - 9))}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def redact(text: str, url: str) -> str:
    """``text`` with the broker URL's password masked (error texts may echo the URL)."""
    try:
        password = url_to_parts(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has nothing we can mask reliably
        password = None
    text = text.replace(url, maybe_sanitize_url(url))
    return text.replace(password, "**") if password else text


def client_config(celery_config: Mapping[str, Any] | None, *, connect_timeout_s: float,
                  socket_timeout_s: float, publish_retries: int, redis: bool = True) -> dict[str, Any]:
    """The workers' Celery settings (same transport options, e.g. visibility_timeout) plus
    client-only bounds on connecting and publishing. The socket options are Redis ones; other
    transports (the demo's SQLAlchemy one) get only the retry policy."""
    conf = dict(celery_config or {})
    transport = dict(conf.get("broker_transport_options") or {})
    if redis:
        transport.setdefault("visibility_timeout", 3600)
        transport.update(
            # kombu's ensure_connection on channel creation (Connection._extract_failover_opts)
            max_retries=publish_retries, interval_start=0, interval_step=0.2, interval_max=0.5,
            socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
        )
    conf.update(
        broker_transport_options=transport,
        broker_connection_timeout=connect_timeout_s,
        broker_connection_max_retries=publish_retries,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": publish_retries, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
    )
    return conf


class CeleryPublisher:
    """A Celery *client*: sends ``crmsync.apply_events(event_ids=[...])`` (up to ``TASK_BATCH``
    ids per message) to the queue of the events' target side: ``<prefix>.to_exchange`` for CRM
    changes, ``<prefix>.to_crm`` for Exchange changes (an event whose row is not found goes to
    ``to_exchange``; the worker skips it).

    Nothing connects at construction; the Celery app is built on first publish.
    """

    def __init__(self, broker_url: str, queue_prefix: str = QUEUE_PREFIX,
                 celery_config: Mapping[str, Any] | None = None, *,
                 connect_timeout_s: float = 2.0, socket_timeout_s: float = 5.0,
                 publish_retries: int = 1) -> None:
        self.broker_url = broker_url
        self.queue_prefix = queue_prefix
        self._config = client_config(celery_config, connect_timeout_s=connect_timeout_s,
                                     socket_timeout_s=socket_timeout_s,
                                     publish_retries=publish_retries,
                                     redis=broker_url.startswith(("redis://", "rediss://", "sentinel://")))
        self._app: Celery | None = None
        self._errors: tuple[type[BaseException], ...] = (KombuOperationalError, OSError)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> CeleryPublisher:
        """Build from ``crmsync.config.Settings``, with the workers' Celery settings."""
        from crmsync.celery_settings import celery_settings

        prefix = getattr(getattr(settings, "worker", None), "queue_prefix", None) or QUEUE_PREFIX
        broker_url = settings.broker.dsn()   # with the password from broker.password_env
        conf = celery_settings(broker_url, prefix, master_name=settings.broker.sentinel_master,
                               sentinel_password=settings.broker.sentinel_password())
        return cls(broker_url, prefix, conf, **kwargs)

    @property
    def safe_broker_url(self) -> str:
        return maybe_sanitize_url(self.broker_url)

    def _client(self) -> Celery:
        if self._app is None:
            from celery import Celery

            app = Celery("crmsync-producer", broker=self.broker_url, set_as_current=False)
            app.conf.update(self._config)
            with app.connection_for_write() as conn:  # builds the transport; does not connect
                self._errors = (KombuOperationalError, OSError,
                                *conn.connection_errors, *conn.channel_errors)
            self._app = app
        return self._app

    def broker_identity(self) -> str | None:
        """The Redis server's ``run_id`` (new on every start, so a changed one says the
        messages held before are gone); None for another transport or an unreachable broker."""
        if not self.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
            return None
        try:
            with self._client().pool.acquire(block=True, timeout=5) as conn:
                info = conn.default_channel.client.info("server")
        except self._errors as exc:
            log.info("producer.broker_unreachable", broker=self.safe_broker_url,
                     error=type(exc).__name__)
            return None
        run_id = info.get("run_id")
        return str(run_id) if run_id else None

    def publish(self, store: EventStore, event_ids: Sequence[int]) -> int:
        """Send each id, marking the sent ones published; on a broker error log it and leave
        the rest ``pending`` for the re-drive. Returns how many were sent."""
        ids = list(event_ids)
        if not ids:
            return 0
        sent = 0
        unmarked: list[int] = []
        rows = self._rows(store, ids)
        queue = ""
        try:
            app = self._client()
            with app.producer_or_acquire() as producer:
                for queue, chunk in self._chunks(ids, rows):
                    app.send_task(APPLY_EVENTS_TASK,
                                  kwargs=EventBatchMessage(event_ids=chunk).model_dump(),
                                  queue=queue, producer=producer, add_to_parent=False,
                                  kwargsrepr=task_repr(chunk, rows))
                    unmarked.extend(chunk)
                    sent += len(chunk)
                    crash_point("after_publish")   # reliability tests: sent, not yet marked
                    if len(unmarked) >= MARK_EVERY:
                        store.mark_published(unmarked)
                        unmarked = []
        except self._errors as exc:
            log.warning("producer.publish_failed", broker=self.safe_broker_url, queue=queue,
                        sent=sent, unsent=len(ids) - sent, error=type(exc).__name__,
                        detail=redact(str(exc), self.broker_url))
        finally:
            if unmarked:
                store.mark_published(unmarked)
        if sent:
            log.debug("producer.published", count=sent, queue_prefix=self.queue_prefix)
            try:
                metrics.count_published([rows[i] for i in ids[:sent] if i in rows])
            except Exception:  # noqa: BLE001 - counting never breaks publishing
                log.debug("producer.count_failed", exc_info=True)
        return sent

    @staticmethod
    def _rows(store: EventStore, ids: list[int]) -> dict[int, Any]:
        """The event rows (their source picks the queue and labels the published counter);
        empty for stores without ``get_events``."""
        get_events = getattr(store, "get_events", None)
        if get_events is None:
            return {}
        try:
            return dict(get_events(ids))
        except Exception:  # noqa: BLE001 - routing falls back to to_exchange; the worker reads the row
            log.debug("producer.rows_unreadable", exc_info=True)
            return {}

    def _chunks(self, ids: list[int], rows: Mapping[int, Any]):  # noqa: ANN202 - a generator
        """(queue, ids) messages in the ids' order: a message ends at TASK_BATCH ids or where
        the target side changes, so "the first n ids were sent" stays true."""
        chunk: list[int] = []
        current = ""
        for event_id in ids:
            row = rows.get(event_id)
            queue = queue_for_source(getattr(row, "source", "crm"), self.queue_prefix)
            if chunk and (queue != current or len(chunk) >= TASK_BATCH):
                yield current, chunk
                chunk = []
            current = queue
            chunk.append(event_id)
        if chunk:
            yield current, chunk

    def close(self) -> None:
        """Release the broker connections (pool) of the client app, if it was built."""
        if self._app is not None:
            self._app.close()
            self._app = None
