"""Wiring of the long-running processes (producer loop, Celery worker) from a Container.

Together with ``crmsync.cli.app`` this is the composition root: the only place that imports both
``producers`` and ``workers`` (which never import each other).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import structlog

from crmsync.bootstrap import Container
from crmsync.config import Settings

log = structlog.get_logger("crmsync.cli.processes")


class LazyPollFeed:
    """Opens the mailbox's Exchange feed on first use, so a producer starts (and keeps feeding
    the CRM side) while Exchange is unreachable; the loop logs and retries each cycle. Polled
    only: a Graph mailbox's delta feed has no doorbell."""

    def __init__(self, container: Container, mailbox: str) -> None:
        self.container = container
        self.mailbox = mailbox
        self._feed = None
        self._lock = threading.Lock()

    def _opened(self):
        with self._lock:   # the loop and the doorbell thread both open it
            if self._feed is None:
                self._feed = self.container.exchange_feed(self.mailbox)
            return self._feed

    def changes(self, sync_state, max_changes=500):
        return self._opened().changes(sync_state, max_changes)


class LazyFeed(LazyPollFeed):
    """An EWS mailbox's feed, opened on first use, with its doorbell (a pull subscription)."""

    def wait_for_change(self, timeout_s: float) -> bool:
        """The feed's doorbell: without this the producer saw Exchange edits only at its poll."""
        return self._opened().wait_for_change(timeout_s)

    def wake(self) -> None:
        """End a ``wait_for_change`` under way (the producer is stopping); nothing if not opened."""
        with self._lock:
            feed = self._feed
        if feed is not None:
            feed.wake()


def build_producer_loop(container: Container):
    from crmsync.cli.linking import first_sync_gate
    from producers.factory import build_loop

    return build_loop(container.settings, changelog=container.changelog, crm=container.crm,
                      store=container.store, feeds=producer_feeds(container),
                      first_sync_gate=first_sync_gate(container), health=container.mailbox_health)


def producer_feeds(container: Container) -> dict[str, LazyPollFeed]:
    """Each mailbox's feed, opened on first use; only EWS feeds ring the producer's doorbell."""
    settings = container.settings
    return {m.address: (LazyFeed if settings.api_of(m.address) == "ews" else LazyPollFeed)(container, m.address)
            for m in settings.mailboxes}


def run_producer(container: Container, stop: threading.Event | None = None) -> None:
    """Run the producer loop in this thread until SIGTERM/SIGINT (or ``stop``)."""
    from crmsync import testhooks

    testhooks.arm_from_env()
    loop = build_producer_loop(container)
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.stop.set())
    loop.run(stop or loop.stop)


def expand_queues(value: str, prefix: str) -> str:
    """``-Q to_crm,maintenance`` -> ``crmsync.to_crm,crmsync.maintenance``: a purpose stands for
    its queue under ``[worker] queue_prefix``; a full queue name is kept as written."""
    from schemas.events import PURPOSES, queue_name

    names = [part.strip() for part in value.split(",") if part.strip()]
    return ",".join(queue_name(n, prefix) if n in PURPOSES else n for n in names)


def worker_argv(settings: Settings, extra: Sequence[str]) -> list[str]:
    """Celery worker arguments: ours first, so the administrator's own options win. Without
    ``-Q`` the worker consumes ``[worker] queues`` (by default every one: to_exchange, to_crm,
    maintenance)."""
    prefix = settings.worker.queue_prefix
    argv = ["worker", "--loglevel", settings.log.level, "-Q", expand_queues(settings.worker.queues, prefix),
            "--concurrency", str(settings.worker.concurrency)]
    rest = list(extra)
    for i, arg in enumerate(rest):
        if arg in ("-Q", "--queues") and i + 1 < len(rest):
            rest[i + 1] = expand_queues(rest[i + 1], prefix)
        elif arg.startswith("--queues="):
            rest[i] = "--queues=" + expand_queues(arg.split("=", 1)[1], prefix)
        elif arg.startswith("-Q") and len(arg) > 2:
            rest[i] = "-Q" + expand_queues(arg[2:], prefix)
    return argv + rest


def run_worker(settings: Settings, extra: Sequence[str] = ()) -> None:
    """A real Celery worker in this process (any celery worker option passes through)."""
    from crmsync import testhooks
    from crmsync.cli.maintenance import configure_maintenance
    from workers.celery_app import create_app

    testhooks.arm_from_env()
    app = create_app(settings)
    configure_maintenance(app, settings)   # the maintenance queue's tasks (and -B's schedule)
    app.worker_main(argv=worker_argv(settings, extra))


def spawn_worker(config_path: str | None, extra: Sequence[str] = (), env: dict[str, str] | None = None,
                 stdout=None, stderr=None) -> subprocess.Popen:
    """Start ``crmsync worker`` as a child process (for ``run`` and ``demo``); without a config
    file it reads the same CRMSYNC_* environment as its parent."""
    config = ["--config", config_path] if config_path else []
    cmd = [sys.executable, "-m", "crmsync", *config, "worker", *extra]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
