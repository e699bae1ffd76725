"""crmsync's Prometheus metrics: every name in one place, so dashboards and alerts have one source.

Why this shape: the producer and every Celery pool process count what they do; a Celery worker
is several processes, so prometheus-client's multiprocess mode is used when
``PROMETHEUS_MULTIPROC_DIR`` is set (``[metrics] multiproc_dir`` sets it for crmsync's own
processes): each process writes its samples to files there and whoever serves ``/metrics``
(the producer with ``[metrics] port``, or ``crmsync metrics-server``) adds them up. Gauges that
describe the deployment rather than one process (queue depth, last successful sync per mailbox,
events per status) are read from the state database and the broker at scrape time by
:class:`StateCollector`, so they are right whichever process serves them.

Nothing is created at import: metrics are built on first use, after the multiprocess directory
is known (prometheus-client picks its value store when the metric is created).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds from an event's recording (the change was committed and seen) to its application.
LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, float("inf"))

_server_lock = threading.Lock()
_servers: dict[int, Any] = {}


@dataclass(frozen=True)
class Metrics:
    published: Any
    applied: Any
    failed: Any
    dead: Any
    lag: Any


def use_multiproc_dir(path: str | None) -> None:
    """Make this process (and the processes it forks) write multiprocess samples to ``path``;
    an existing ``PROMETHEUS_MULTIPROC_DIR`` wins. Call before the first metric is used."""
    if path and not os.environ.get(ENV_MULTIPROC):
        os.environ[ENV_MULTIPROC] = path
    if os.environ.get(ENV_MULTIPROC):
        from prometheus_client import values

        os.makedirs(os.environ[ENV_MULTIPROC], exist_ok=True)

        values.ValueClass = values.get_value_class()   # in case prometheus_client was imported before


@cache
def metrics() -> Metrics:
    """The process's metric objects (created once, on first use)."""
    from prometheus_client import Counter, Histogram

    labels = ("source", "mailbox")
    return Metrics(
        published=Counter("crmsync_events_published", "Events sent to the broker", labels),
        applied=Counter("crmsync_events_applied", "Events applied by a worker", (*labels, "outcome")),
        failed=Counter("crmsync_events_failed", "Failed attempts that will be retried", labels),
        dead=Counter("crmsync_events_dead", "Events that became dead letters", labels),
        lag=Histogram("crmsync_sync_lag_seconds", "Change recorded -> applied on the other side",
                      labels, buckets=LAG_BUCKETS),
    )


def _guarded(fn: Callable[[], None]) -> None:
    """Counting must never break the sync: a metrics error is swallowed."""
    try:
        fn()
    except Exception:  # noqa: BLE001 - metrics are best-effort by design
        pass


def count_published(events: Iterable[Any]) -> None:
    """``events``: objects with ``source`` and ``mailbox`` (the event rows just sent)."""
    def run() -> None:
        m = metrics()
        for e in events:
            m.published.labels(e.source, e.mailbox).inc()
    _guarded(run)


def count_applied(events: Mapping[int, Any], outcomes: Mapping[int, str], now: datetime) -> None:
    """Applied events (id -> event row) with their outcome; observes the lag of each."""
    def run() -> None:
        m = metrics()
        for event_id, outcome in outcomes.items():
            e = events.get(event_id)
            if e is None:
                continue
            m.applied.labels(e.source, e.mailbox, outcome or "done").inc()
            if e.created_at is not None:
                m.lag.labels(e.source, e.mailbox).observe(max(0.0, (now - e.created_at).total_seconds()))
    _guarded(run)


def count_failed(event: Any) -> None:
    _guarded(lambda: metrics().failed.labels(event.source, event.mailbox).inc())


def count_dead(event: Any) -> None:
    _guarded(lambda: metrics().dead.labels(event.source, event.mailbox).inc())


class StateCollector:
    """Gauges read at scrape time: queue depth, events per status, last successful sync, and
    (with ``lag``) the current lag per mailbox and side.

    ``summary`` returns ``status_summary()`` rows of the state store; ``queue`` returns
    ``(queue name, depth)`` pairs (a single pair is accepted too; depth None: unknown).
    ``waiting`` (optional) returns what waits for a person per mailbox: ``{mailbox: {"held_deletes":
    n, "open_conflicts": n, "review_items": n}}`` (``crmsync.cli.policy.waiting_counts``).
    Failures to read are reported as ``crmsync_up 0``.
    """

    #: key of a ``waiting`` row -> (metric name, help)
    WAITING = {"held_deletes": ("crmsync_held_deletes", "Deletes held by the delete brake or the empty-folder "
                                                        "guard, waiting for a person, per mailbox"),
               "open_conflicts": ("crmsync_open_conflicts", "Conflicting fields held for a person to resolve, "
                                                            "per mailbox"),
               "review_items": ("crmsync_review_items", "New records waiting in the review queue, per mailbox")}

    def __init__(self, summary: Callable[[], list[dict[str, Any]]],
                 queue: Callable[[], Any],
                 lag: Callable[[], Mapping[str, Mapping[str, float]]] | None = None,
                 waiting: Callable[[], Mapping[str, Mapping[str, int]]] | None = None) -> None:
        self._summary = summary
        self._queue = queue
        #: mailbox -> side ("crm->exchange" | "exchange->crm") -> seconds the oldest unapplied
        #: event has waited (``crmsync.adapters.state.status.current_lag``).
        self._lag = lag
        self._waiting = waiting

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("crmsync_state_up", "1 when the state database could be read")
        events = GaugeMetricFamily("crmsync_events", "Events in the event log per status", labels=["mailbox", "status"])
        last = GaugeMetricFamily("crmsync_last_sync_timestamp_seconds",
                                 "Unix time of the last successful sync of a record, per mailbox", labels=["mailbox"])
        links = GaugeMetricFamily("crmsync_links", "Linked records per mailbox", labels=["mailbox"])
        try:
            rows = self._summary()
            up.add_metric([], 1)
        except Exception:  # noqa: BLE001 - a scrape must still answer
            rows = []
            up.add_metric([], 0)
        for row in rows:
            for status in ("pending", "published", "applied", "failed", "dead"):
                if status in row:
                    events.add_metric([row["mailbox"], status], row[status])
            links.add_metric([row["mailbox"]], row["links"])
            if row.get("last_synced_at") is not None:
                last.add_metric([row["mailbox"]], row["last_synced_at"].timestamp())
        yield from (up, events, last, links)
        if self._lag is not None:
            lag = GaugeMetricFamily("crmsync_current_lag_seconds",
                                    "Age of the oldest event not yet applied, per mailbox and side",
                                    labels=["mailbox", "side"])
            try:
                for mailbox, sides in sorted(self._lag().items()):
                    for side, seconds in sorted(sides.items()):
                        lag.add_metric([mailbox, side], seconds)
            except Exception:  # noqa: BLE001 - a scrape must still answer (crmsync_state_up says why)
                pass
            yield lag
        if self._waiting is not None:
            families = {key: GaugeMetricFamily(name, text, labels=["mailbox"])
                        for key, (name, text) in self.WAITING.items()}
            try:
                for mailbox, counts in sorted(self._waiting().items()):
                    for key, family in families.items():
                        family.add_metric([mailbox], counts.get(key, 0))
            except Exception:  # noqa: BLE001 - a scrape must still answer
                pass
            yield from families.values()
        depth = GaugeMetricFamily("crmsync_queue_depth", "Messages waiting in the broker queue", labels=["queue"])
        try:
            pairs = self._queue()
            if isinstance(pairs, tuple):
                pairs = [pairs]
        except Exception:  # noqa: BLE001
            pairs = []
        for name, value in pairs:
            if value is not None:
                depth.add_metric([name], value)
        yield depth


def registry(extra: Iterable[Any] = ()) -> Any:
    """The registry to serve: every process's samples in multiprocess mode, else this one's."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if os.environ.get(ENV_MULTIPROC):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    else:
        reg = REGISTRY
    for collector in extra:
        reg.register(collector)
    return reg


def serve(port: int, address: str, extra: Iterable[Any] = ()) -> int:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread; returns the bound port."""
    from prometheus_client import start_http_server

    with _server_lock:
        if port in _servers and port:
            return port
        server, _thread = start_http_server(port, addr=address, registry=registry(extra))
        bound = server.server_address[1]
        _servers[bound] = server
        return bound
