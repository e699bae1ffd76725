"""The ``crmsync`` command line: one clear line per error, a non-zero exit, never a secret."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.events import events_app, history_command
from crmsync.errors import CrmsyncError

app = typer.Typer(
    name="crmsync",
    help="Two-way sync of CRM accounts with Exchange contacts, through Redis and Celery.\n\n"
         "Start with `crmsync demo`. In production: `crmsync init`, then `crmsync producer` and "
         "`crmsync worker` (or `crmsync run` for both on one host).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
app.add_typer(events_app, name="events")
app.command("history")(history_command)

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


class _State:
    config: str | None = None


state = _State()


def settings():
    from crmsync.config import load_settings
    from crmsync.logging_setup import configure_logging

    loaded = load_settings(state.config)
    # [log] json unset: JSON lines when the log stream is not a terminal (journald, docker, files)
    as_json = loaded.log.json if "json_" in loaded.log.model_fields_set else None
    configure_logging(loaded.log.level, as_json, ews_wire=loaded.log.ews_wire)
    return loaded


def container():
    from crmsync.bootstrap import container_for

    return container_for(settings())


def ready_container():
    """The container, once both databases are known to be set up (else a clear error)."""
    from crmsync.adapters.database import check_crm_schema, state_revision
    from crmsync.config import mask_url

    c = container()
    if state_revision(c.state_engine) is None:
        raise CrmsyncError(f"state database {mask_url(c.settings.state.url)} has no crmsync tables "
                           "yet; run `crmsync init` first")
    check_crm_schema(c.crm_engine)
    return c


@app.callback()
def main_options(
    config: str | None = typer.Option(
        None, "--config", "-c", envvar="CRMSYNC_CONFIG", metavar="FILE",
        help="TOML configuration file (default: built-in defaults plus CRMSYNC_* environment "
             "variables)."),
) -> None:
    state.config = config


@app.command()
def init() -> None:
    """Create what is missing, idempotently: the state tables (Alembic migrations) and, in an
    empty CRM database, the reference schema with its change-capture triggers."""
    from crmsync.adapters.database import init_crm, init_state
    from crmsync.config import mask_url

    c = container()
    init_state(c.state_engine)
    console.print(f"state database ready: {mask_url(c.settings.state.url)}")
    init_crm(c.crm_engine)
    console.print(f"CRM database ready (accounts, contacts, crm_changelog, triggers): "
                  f"{mask_url(c.settings.crm.url)}")


@app.command(context_settings=PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker that applies events. Any `celery worker` option passes through,
    e.g. `crmsync worker --concurrency 8 --pool threads -n w1@%h`."""
    from crmsync.cli.metrics_server import prepare
    from crmsync.cli.processes import run_worker

    loaded = ready_container().settings
    prepare(loaded)
    run_worker(loaded, ctx.args)


@app.command()
def producer() -> None:
    """Run the change producers: the CRM changelog feed and each mailbox's Exchange feed turn
    changes into event rows and publish them to the broker."""
    from crmsync.cli.metrics_server import prepare, serve_from_producer
    from crmsync.cli.processes import run_producer

    c = ready_container()
    prepare(c.settings)
    serve_from_producer(c)
    run_producer(c)


@app.command(context_settings=PASSTHROUGH)
def run(ctx: typer.Context) -> None:
    """Run the producers and one worker with an embedded beat (the re-drive and drift check)
    together on this host (extra options go to the worker)."""
    from crmsync.cli.metrics_server import prepare, serve_from_producer
    from crmsync.cli.processes import run_producer, spawn_worker, stop_process

    c = ready_container()
    prepare(c.settings)
    serve_from_producer(c)
    child = spawn_worker(state.config, ["-B", *ctx.args])
    try:
        run_producer(c)
    finally:
        stop_process(child)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


def _status_view(c, stale_after_s: float):
    """(the status table and queue line as one renderable, the list of problems for --check)."""
    from datetime import UTC, datetime

    from rich.console import Group
    from rich.text import Text

    from crmsync.adapters.broker import queue_depths
    from crmsync.adapters.state.status import attention, current_lag

    now = datetime.now(UTC)
    summary = c.store.status_summary()
    trouble = attention(c.state_engine)
    lag = current_lag(c.state_engine, now)
    problems: list[str] = []
    table = Table(title=f"crmsync status ({now:%Y-%m-%d %H:%M:%S} UTC)")
    for column in ("mailbox", "links", "last sync", "lag CRM→Exchange", "lag Exchange→CRM",
                   "pending", "published", "applied", "retrying", "dead"):
        table.add_column(column)
    for row in summary:
        extra = trouble.get(row["mailbox"], {})
        retrying = extra.get("retrying", 0) + extra.get("failed", 0)
        sides = lag.get(row["mailbox"], {})
        table.add_row(row["mailbox"], str(row["links"]), str(row["last_synced_at"] or "never"),
                      _seconds(sides.get("crm->exchange", 0.0)), _seconds(sides.get("exchange->crm", 0.0)),
                      str(row["pending"]), str(row["published"]), str(row["applied"]),
                      str(retrying), str(row["dead"]))
        if row["dead"]:
            problems.append(f"{row['mailbox']}: {row['dead']} dead event(s); see them with `crmsync events list "
                            "--status dead`, replay after fixing with `crmsync events replay --status dead`")
        if retrying:
            problems.append(f"{row['mailbox']}: {retrying} event(s) failing and being retried")
        oldest = extra.get("oldest_unfinished")
        if oldest is not None and (now - oldest).total_seconds() > stale_after_s:
            problems.append(f"{row['mailbox']}: sync is stale: an event has waited since {oldest:%Y-%m-%d %H:%M:%S} "
                            f"UTC (over {stale_after_s:g} s); are the workers running? (`crmsync doctor`)")
    from crmsync.cli.policy import held_problems

    problems += held_problems(c)
    from crmsync.cli.access import unavailable_view
    from crmsync.cli.linking import first_sync_waiting

    unavailable, unavailable_problems = unavailable_view(c)
    problems += unavailable_problems
    waiting = first_sync_waiting(c)
    problems += waiting
    from crmsync.cli.review import review_lines

    reviews = review_lines(c)
    problems += reviews
    depths, why = queue_depths(c.settings)
    queue = ("broker queues: " + ", ".join(f"{name} {count}" for name, count in depths.items())
             + " message(s) waiting" if depths else f"broker queues: unknown ({why})")
    return Group(table, *([unavailable] if unavailable is not None else []), queue,
                 *(Text(f"waiting: {line}") for line in waiting),
                 *(Text(f"review: {line}") for line in reviews)), problems


@app.command()
def status(
    check: bool = typer.Option(False, "--check", help="exit 1 when something needs a person (dead or failing "
                               "events, a stale sync), listing what; for cron and monitoring"),
    watch: bool = typer.Option(False, "--watch", help="refresh in place until Ctrl-C"),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="seconds between refreshes with --watch"),
    stale_after: float = typer.Option(900.0, "--stale-after", min=1,
                                      help="seconds an event may wait before the sync counts as stale"),
) -> None:
    """Per mailbox: links, last sync, the current lag of each side (age of the oldest event not
    yet applied), pending/retrying/dead events; and the depth of each broker queue."""
    c = ready_container()
    if watch:
        import signal
        import threading

        from rich.live import Live

        # Ctrl-C / SIGTERM only set a flag: a KeyboardInterrupt raised inside a database or
        # broker call could be swallowed there and leave the watch running for ever.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        with Live(_status_view(c, stale_after)[0], console=console, refresh_per_second=4) as live:
            while not stop.wait(interval):
                live.update(_status_view(c, stale_after)[0])
        return
    view, problems = _status_view(c, stale_after)
    console.print(view)
    if check:
        if problems:
            for line in problems:
                console.print(f"NEEDS ATTENTION: {line}", markup=False, highlight=False)
            raise typer.Exit(1)
        console.print("all good: nothing needs a person")


@app.command(context_settings={**PASSTHROUGH, "help_option_names": []})
def emulator(ctx: typer.Context) -> None:
    """Run the bundled Exchange Web Services emulator (same options as
    `python -m ews_emulator`; try `crmsync emulator --help`)."""
    from ews_emulator.__main__ import main as emulator_main

    raise typer.Exit(emulator_main(list(ctx.args)))


@app.command()
def demo(
    directory: str = typer.Option("crmsync-demo", "--dir", help="where the demo keeps its files"),
    duration: float = typer.Option(0, help="stop after this many seconds (0: until Ctrl-C)"),
    fresh: bool = typer.Option(True, help="start from new demo data (delete the old demo files)"),
    api: str = typer.Option("ews", "--api", help="how crmsync reaches the mailbox: ews, or graph (the "
                                                 "emulator's Microsoft Graph front door over HTTPS)"),
) -> None:
    """Start an Exchange emulator, a seeded SQLite CRM, the producers and a worker, run the
    initial sync with a progress bar, then show every change as it syncs. Edit either side and
    watch it arrive on the other."""
    from crmsync.cli.demo import run_demo

    if api not in ("ews", "graph"):
        raise typer.BadParameter(f"{api!r}: expected ews or graph", param_hint="--api")
    run_demo(directory, duration=duration, fresh=fresh, console=console, api=api)


from crmsync.cli import linking as _linking  # noqa: E402 - its commands need `app` above

_linking.register(app)

from crmsync.cli import policy as _policy  # noqa: E402 - its commands need `app` above

_policy.register(app)

from crmsync.cli import review as _review  # noqa: E402 - `crmsync review ...`

_review.register(app)

from crmsync.cli import config_check as _config_check  # noqa: E402 - `crmsync config check`

_config_check.register(app)

from crmsync.cli import console as _console  # noqa: E402 - `crmsync console`

_console.register(app)

from crmsync.cli.doctor import doctor as _doctor  # noqa: E402 - registered after the app exists
from crmsync.cli.flower import flower as _flower  # noqa: E402
from crmsync.cli.maintenance import beat as _beat  # noqa: E402
from crmsync.cli.metrics_server import metrics_server as _metrics_server  # noqa: E402

app.command("doctor")(_doctor)
app.command("flower")(_flower)
app.command("metrics-server")(_metrics_server)
app.command("beat", context_settings=PASSTHROUGH)(_beat)


def main() -> None:
    try:
        app()
    except CrmsyncError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            err.print(f"crmsync: {line}", markup=False, highlight=False)
        sys.exit(2)
