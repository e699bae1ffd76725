"""Serving crmsync's Prometheus metrics: from the producer (``[metrics] port``) or on its own
(``crmsync metrics-server``). Both serve the same registry: every crmsync process's counters
(multiprocess mode, when a directory is configured) plus the gauges read from the state
database and the broker at scrape time."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # pragma: no cover - the CLI imports its parts lazily
    from crmsync.bootstrap import Container
    from crmsync.config import Settings

DEFAULT_PORT = 9464


def prepare(settings: Settings) -> None:
    """Before any metric is used in this process or its children: the multiprocess directory."""
    from crmsync.metrics import use_multiproc_dir

    use_multiproc_dir(settings.metrics.multiproc_dir)


def start(container: Container, port: int, address: str) -> int:
    """Serve /metrics from a daemon thread; returns the bound port."""
    from datetime import UTC, datetime

    from crmsync.adapters.broker import queue_depths
    from crmsync.adapters.state.status import current_lag
    from crmsync.cli.policy import waiting_counts
    from crmsync.metrics import StateCollector, serve

    settings = container.settings
    collector = StateCollector(container.store.status_summary,
                               lambda: list(queue_depths(settings)[0].items()),
                               lambda: current_lag(container.state_engine, datetime.now(UTC)),
                               lambda: waiting_counts(container))
    return serve(port, address, [collector])


def serve_from_producer(container: Container) -> None:
    """The producer's endpoint, when ``[metrics] port`` is set (0: off)."""
    import structlog

    port = container.settings.metrics.port
    if port:
        bound = start(container, port, container.settings.metrics.address)
        structlog.get_logger("crmsync.metrics").info("metrics.serving", address=container.settings.metrics.address,
                                                      port=bound)


def metrics_server(
    port: int = typer.Option(None, "--port", "-p", min=1, max=65535,
                             help=f"port to serve /metrics on (default: [metrics] port, else {DEFAULT_PORT})"),
    address: str = typer.Option(None, "--address", help="address to listen on (default: [metrics] address)"),
) -> None:
    """Serve the Prometheus endpoint /metrics on its own (when the producer does not, or on a
    worker host): the counters of every crmsync process sharing the [metrics] multiproc_dir
    (PROMETHEUS_MULTIPROC_DIR), the queue depth, events per status, the last successful
    sync, held deletes, open conflicts and review items per mailbox. Runs until Ctrl-C / SIGTERM."""
    from crmsync.cli.app import console, ready_container

    container = ready_container()
    prepare(container.settings)
    metrics = container.settings.metrics
    bound = start(container, port or metrics.port or DEFAULT_PORT, address or metrics.address)
    console.print(f"serving http://{address or metrics.address}:{bound}/metrics (Ctrl-C to stop)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
