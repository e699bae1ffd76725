"""Everything in deploy/ runs a real crmsync command with options that exist.

The compose file is parsed with PyYAML (anchors and merge keys resolved) and the systemd units
line by line; every command of a service built from the crmsync image and every Exec* line of a
unit must be ``crmsync <command> [options]`` that crmsync's own Typer app parses (option names
and values, through click's ``make_context``, without running anything). Options that
``crmsync worker`` passes through to Celery are checked against Celery's own worker command.
The CRMSYNC_* variables they set must be configuration keys crmsync reads.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
import typer.main
import yaml

from crmsync.cli.app import app
from crmsync.config import _SECTIONS, _keys

try:   # recent Typer vendors its own copy of click: its parse errors are not click's classes
    from typer._click.exceptions import UsageError as _TyperUsageError
    USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _TyperUsageError)
except ImportError:  # pragma: no cover - Typer on plain click
    USAGE_ERRORS = (click.UsageError,)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PASSTHROUGH = {"worker", "run", "beat"}   # extra options go to `celery worker` (`celery beat`)
OTHER_VARS = {"CRMSYNC_CONFIG", "CRMSYNC_MAILBOXES", "CRMSYNC_FLOWER_USER", "CRMSYNC_FLOWER_PASSWORD",
              "CRMSYNC_EXCHANGE_PASSWORD", "CRMSYNC_EXCHANGE_CLIENT_SECRET"}   # the default *_env names


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def crmsync_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == "crmsync:latest"}


def unit_lines(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, in order (keys may repeat)."""
    section, out = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def unit_commands(path: Path) -> list[list[str]]:
    cmds = []
    for section, key, value in unit_lines(path):
        if section == "Service" and key.startswith("Exec"):
            value = value.lstrip("-@:+!")   # systemd's command prefixes
            cmds.append(shlex.split(value.replace("%i", "main").replace("%H", "host").replace("%h", "host")))
    return cmds


def check_command(argv: list[str], where: str) -> None:
    """argv is ``crmsync [--config F] <command> [options]`` that the Typer app parses."""
    assert argv and Path(argv[0]).name == "crmsync", f"{where}: runs {argv[:1]}, not crmsync"
    root = typer.main.get_command(app)
    with root.make_context("crmsync", list(argv[1:])) as ctx:
        # a group keeps the sub-command and its arguments apart (click renamed the attribute in 8.2)
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
        remaining = [*protected, *ctx.args]
    name, rest = (remaining[0], remaining[1:]) if remaining else (None, [])
    assert name in root.commands, f"{where}: `crmsync {name}` is not a crmsync command"
    cmd = root.commands[name]
    try:
        with cmd.make_context(name, list(rest)) as sub:
            extra = list(sub.args)
    except USAGE_ERRORS as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}`: {exc.format_message()}")
    if name in PASSTHROUGH and extra:
        from celery.bin.beat import beat as celery_beat
        from celery.bin.worker import worker as celery_worker

        celery_cmd = celery_beat if name == "beat" else celery_worker
        try:
            celery_cmd.make_context(name, list(extra), obj=None)
        except click.UsageError as exc:
            pytest.fail(f"{where}: celery worker options {extra}: {exc.format_message()}")
        except Exception:  # noqa: BLE001 - options parsed; the callback context (app) is not needed
            pass
    else:
        assert not extra, f"{where}: unexpected arguments {extra}"


def config_vars() -> set[str]:
    return {f"CRMSYNC_{section}_{key}".upper() for section, model in _SECTIONS.items() for key in _keys(model)}


def test_there_is_something_to_check():
    assert set(crmsync_services()) >= {"crmsync-init", "crmsync-producer", "crmsync-worker", "crmsync-beat", "flower"}
    assert {u.name for u in UNITS} >= {"crmsync-producer.service", "crmsync-worker@.service", "crmsync-beat.service",
                                       "crmsync-flower.service", "crmsync-metrics.service"}


@pytest.mark.parametrize("name", sorted(crmsync_services()))
def test_compose_service_runs_a_real_crmsync_command(name):
    check_command(crmsync_services()[name]["command"], f"docker-compose.yml service {name}")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_runs_real_crmsync_commands(unit):
    cmds = unit_commands(unit)
    assert cmds, f"{unit.name}: no ExecStart"
    for argv in cmds:
        assert argv[0].startswith("/opt/crmsync/venv/bin/"), f"{unit.name}: {argv[0]} is not the venv's"
        check_command(argv, unit.name)
    keys = [k for s, k, _ in unit_lines(unit) if s == "Service"]
    assert "Restart" in keys, f"{unit.name}: no restart policy"


def test_crmsync_variables_are_known():
    known = config_vars() | OTHER_VARS
    for name, svc in crmsync_services().items():
        for var in svc.get("environment") or {}:
            if var.startswith("CRMSYNC_"):
                assert var in known, f"docker-compose.yml service {name}: {var} is not a crmsync setting"
    for unit in UNITS:
        for _section, key, value in unit_lines(unit):
            if key == "Environment":
                var = value.split("=", 1)[0]
                if var.startswith("CRMSYNC_"):
                    assert var in known, f"{unit.name}: {var} is not a crmsync setting"


def test_exactly_one_beat_and_workers_on_every_queue():
    """The re-drive runs in one place: one beat service, never scaled; the workers, together,
    consume every queue (no -Q, or -Q naming real queues)."""
    from schemas.events import PURPOSES

    services = crmsync_services()
    beats = [name for name, svc in services.items() if svc["command"][1:2] == ["beat"]]
    assert beats == ["crmsync-beat"]
    assert "replicas" not in (services["crmsync-beat"].get("deploy") or {})
    consumed: set[str] = set()
    for svc in services.values():
        argv = svc["command"]
        if argv[1:2] == ["worker"]:
            queues = argv[argv.index("-Q") + 1].split(",") if "-Q" in argv else list(PURPOSES)
            assert set(queues) <= set(PURPOSES), f"{argv}: unknown queue"
            consumed |= set(queues)
    assert consumed == set(PURPOSES)


def test_flower_needs_credentials_from_the_environment():
    flower = crmsync_services()["flower"]
    assert {"CRMSYNC_FLOWER_USER", "CRMSYNC_FLOWER_PASSWORD"} <= set(flower["environment"])
    assert not any("password" in part.lower() for part in flower["command"])


def test_a_wrong_command_is_caught():
    """The checker itself: an unknown option and a non-crmsync binary are refused."""
    with pytest.raises(pytest.fail.Exception):
        check_command(["crmsync", "flower", "--no-such-option"], "example")
    with pytest.raises(AssertionError):
        check_command(["celery", "-A", "workers.celery_app:app", "flower"], "example")
    with pytest.raises(pytest.fail.Exception):
        check_command(["crmsync", "worker", "--no-such-celery-option"], "example")


def test_grafana_dashboard_uses_only_real_metric_names():
    """Every crmsync_* series in the dashboard is one crmsync exports."""
    from prometheus_client.core import CollectorRegistry

    from crmsync import metrics

    registry = CollectorRegistry()
    families = []
    for collector in (metrics.StateCollector(lambda: [], lambda: ("q", 0), waiting=lambda: {"m": {}}),):
        registry.register(collector)
    families += list(registry.collect())
    m = metrics.metrics()
    for metric in (m.published, m.applied, m.failed, m.dead, m.lag):
        families += list(metric.collect())
    exported = set()
    for family in families:
        exported.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ())
        exported |= {family.name + s for s in suffixes}
    dashboard = json.loads((DEPLOY / "grafana" / "crmsync-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bcrmsync_[a-z_]+", expr)}
    assert used, "the dashboard queries no crmsync metric"
    assert used <= exported, f"not exported by crmsync: {sorted(used - exported)}"
