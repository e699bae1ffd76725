"""Doorbells: wake the producer loop early when something probably changed (DESIGN.md §5).

A doorbell is never the truth: the changelog and the Exchange sync state are, and the loop's
poll interval catches anything a doorbell missed (a dropped inotify event, a lost NOTIFY while
reconnecting). So every doorbell here fails soft: it logs and keeps trying, or stays quiet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)


CRM_SOURCE = "crm"


def exchange_source(mailbox: str) -> str:
    """The source name an Exchange mailbox's doorbell rings with (the loop reads that mailbox)."""
    return f"exchange:{mailbox}"


class _Bell:
    """A ``threading.Event`` that can be rung, waited on (consuming the ring) and forwarded.

    A ring may name its source (``exchange_source(mailbox)``), so the loop reads only what
    rang; a ring without one means "anything may have changed".
    """

    #: What this bell watches; None: no one source (its rings make the loop read everything).
    source: str | None = None

    def __init__(self) -> None:
        self._rung = threading.Event()
        self._forward: Callable[[str | None], None] | None = None
        self._sources_lock = threading.Lock()
        self._sources: set[str] | None = set()

    def ring(self, source: str | None = None) -> None:
        source = source or self.source
        with self._sources_lock:   # recorded before the ring is seen, so never lost
            if source is None:
                self._sources = None
            elif self._sources is not None:
                self._sources.add(source)
        self._rung.set()
        if self._forward is not None:
            self._forward(source)

    def take_sources(self) -> set[str] | None:
        """The sources rung since the last call (take them after ``wait`` returned True and
        before reading); None when a ring named none: read everything."""
        with self._sources_lock:
            taken, self._sources = self._sources, set()
        return taken

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if rung since the last wait."""
        rung = self._rung.wait(timeout)
        if rung:
            self._rung.clear()   # before the caller polls, so a ring during the poll counts
        return rung

    def start(self) -> None:
        """Nothing to start for a bell that is only rung by hand."""

    def armed(self) -> bool:
        """True while it would ring on a change; False makes the loop poll at its short
        fallback interval instead of the long safety-net one."""
        return False

    def stop(self) -> None:
        """Nothing to stop."""


class NullDoorbell(_Bell):
    """No early wake-up: the loop relies on its (fallback) poll interval (and ``ring()`` by hand)."""


# ----------------------------------------------------------------------------- SQLite file

def sqlite_path(url_or_path: str | Path) -> Path:
    """The database file of a SQLAlchemy SQLite URL (or a plain path)."""
    text = str(url_or_path)
    if "://" in text:
        database = make_url(text).database
        if not database or database == ":memory:":
            raise ValueError(f"SQLite URL {make_url(text).render_as_string()} has no database "
                             "file to watch")
        text = database
    return Path(text).resolve()


class SqliteFileDoorbell(_Bell):
    """Watchdog on the database file's directory: rings when the file, its ``-wal`` or its
    ``-journal`` is modified, created, moved or deleted. Opens, closes and the ``-shm`` file are
    ignored: readers (this producer included) touch those, which would ring forever.

    The ring is debounced on the trailing edge (``settle_s`` after the last write): the file is
    written *before* the transaction is visible (WAL frames first, then the wal-index in -shm;
    a long transaction writes for a while before its commit frame), so ringing on the first
    write would make the loop read too early and then sleep through the commit.
    """

    _EVENT_TYPES = frozenset({"modified", "created", "moved", "deleted"})
    source = CRM_SOURCE

    def __init__(self, db_path: str | Path, settle_s: float = 0.05) -> None:
        super().__init__()
        self.db_path = sqlite_path(db_path)
        self.settle_s = settle_s
        self._names = {self.db_path.name, f"{self.db_path.name}-wal",
                       f"{self.db_path.name}-journal"}
        self._observer = None
        self._last_write = 0.0
        self._written = threading.Event()
        self._stopping = threading.Event()
        self._debouncer: threading.Thread | None = None

    def _debounce(self) -> None:
        while not self._stopping.is_set():
            if not self._written.wait(0.5):
                continue
            while not self._stopping.is_set():      # until settle_s passed with no new write
                quiet_for = time.monotonic() - self._last_write
                if quiet_for >= self.settle_s:
                    break
                time.sleep(self.settle_s - quiet_for)
            self._written.clear()
            if time.monotonic() - self._last_write < self.settle_s:
                self._written.set()                 # a write slipped in between: go again
                continue
            self.ring()

    def armed(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def _on_event(self, event) -> None:  # watchdog FileSystemEvent
        if event.is_directory or event.event_type not in self._EVENT_TYPES:
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        for raw in paths:
            path = Path(raw.decode() if isinstance(raw, bytes) else raw)
            if path.name in self._names and path.parent == self.db_path.parent:
                self._last_write = time.monotonic()
                self._written.set()
                return

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        if self._observer is not None:
            return
        bell = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                bell._on_event(event)

        self._stopping.clear()
        self._debouncer = threading.Thread(target=self._debounce, daemon=True,
                                           name=f"doorbell-{self.db_path.name}")
        self._debouncer.start()
        observer = Observer()
        observer.daemon = True
        observer.schedule(Handler(), str(self.db_path.parent), recursive=False)
        observer.start()
        self._observer = observer
        log.debug("doorbell.started", kind="sqlite-file", path=str(self.db_path))

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        self._stopping.set()
        debouncer, self._debouncer = self._debouncer, None
        if debouncer is not None:
            debouncer.join(timeout=5)


# ----------------------------------------------------------------------------- PostgreSQL

class _ThreadedBell(_Bell):
    """A doorbell that listens in a thread of its own, started and stopped with the loop."""

    def _thread_name(self) -> str:
        return f"doorbell-{type(self).__name__}"

    def _join_timeout(self) -> float:
        return 5.0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self._join_timeout())

    def _run(self) -> None:  # pragma: no cover - each subclass listens its own way
        raise TypeError(f"{type(self).__name__} must define _run")


class PostgresListenDoorbell(_ThreadedBell):
    """``LISTEN <channel>`` on its own autocommit connection in a thread; each NOTIFY rings.

    Reconnects with back-off after a lost connection and rings once on every (re)connect, since
    notifications sent while it was away are gone.
    """

    source = CRM_SOURCE

    def __init__(self, url: str, channel: str = "crm_changelog", *,
                 reconnect_max_s: float = 30.0) -> None:
        super().__init__()
        sa_url = make_url(url)
        self._conninfo = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._safe_url = sa_url.render_as_string(hide_password=True)
        self.channel = channel
        self.reconnect_max_s = reconnect_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()   # set while LISTEN is active (tests wait on it)

    def armed(self) -> bool:
        return self.listening.is_set()

    def _thread_name(self) -> str:
        return f"pg-listen-{self.channel}"

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        delay = 0.5
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.listening.set()
                    delay = 0.5
                    self.ring()
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.ring()
            except Exception as exc:  # noqa: BLE001 - a doorbell never dies; the poll is the net
                self.listening.clear()
                log.warning("doorbell.listen_failed", url=self._safe_url, channel=self.channel,
                            error=type(exc).__name__, retry_in_s=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
        self.listening.clear()


# ----------------------------------------------------------------------------- others

class CallbackDoorbell(_ThreadedBell):
    """Rings when ``check(timeout_s)`` returns True, called over and over in a thread — e.g. an
    Exchange feed's ``wait_for_change`` on a pull/streaming subscription.

    A failing check is retried with back-off (``error_backoff_s`` doubling up to
    ``error_backoff_max_s``), and the first check that works again rings once: a reply lost
    with the error may have carried events the server will not hand out again.
    """

    def __init__(self, check: Callable[[float], bool], name: str, timeout_s: float = 30.0,
                 error_backoff_s: float = 1.0, error_backoff_max_s: float = 30.0,
                 wake: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.check = check
        #: Ends a ``check`` that is waiting (e.g. the feed's ``wake``), so ``stop`` — a SIGTERM —
        #: does not wait out the rest of its ``timeout_s``.
        self.wake = wake
        self.name = name
        self.source = name
        self.timeout_s = timeout_s
        self.error_backoff_s = error_backoff_s
        self.error_backoff_max_s = error_backoff_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._working = threading.Event()

    def armed(self) -> bool:
        return self._working.is_set()

    def _join_timeout(self) -> float:
        return self.timeout_s + 1

    def stop(self) -> None:
        self._stopping.set()
        if self.wake is not None:
            try:
                self.wake()
            except Exception as exc:  # noqa: BLE001 - the join below still bounds the wait
                log.debug("doorbell.wake_failed", doorbell=self.name, error=type(exc).__name__)
        super().stop()

    def _run(self) -> None:
        delay = self.error_backoff_s
        failed = False
        while not self._stopping.is_set():
            try:
                changed = self.check(self.timeout_s)
                self._working.set()
            except Exception as exc:  # noqa: BLE001 - fail soft, the poll interval is the net
                self._working.clear()
                log.warning("doorbell.check_failed", doorbell=self.name, error=type(exc).__name__,
                            detail=str(exc)[:200], retry_in_s=delay)
                failed = True
                self._stopping.wait(delay)
                delay = min(delay * 2, self.error_backoff_max_s)
                continue
            if changed or failed:
                self.ring()
            failed, delay = False, self.error_backoff_s


class CombinedDoorbell(_Bell):
    """Any of several doorbells rings this one."""

    def __init__(self, *doorbells: _Bell) -> None:
        super().__init__()
        self.doorbells = list(doorbells)
        for bell in self.doorbells:
            bell._forward = self.ring

    def start(self) -> None:
        for bell in self.doorbells:
            bell.start()

    def armed(self) -> bool:
        """Only when every source has a working doorbell may the loop poll rarely."""
        return all(bell.armed() for bell in self.doorbells)

    def stop(self) -> None:
        for bell in self.doorbells:
            bell.stop()
