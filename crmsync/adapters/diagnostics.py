"""Probes for ``crmsync doctor``: look at the databases, Redis and the Celery workers and report
plain facts (the judgement is crmsync.service.doctor's). Every probe is bounded in time and
never raises for what it is probing; errors come back as text without secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from crmsync.adapters.database import SchemaMismatch, _existing_triggers, _expected_triggers, check_crm_schema
from crmsync.config import Settings, mask_url


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return mask_url(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def probe_crm(engine: Engine) -> dict[str, Any]:
    """Reachable? Tables and columns present? Which change-capture triggers are missing?"""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - reported
        return {"error": _error(exc)}
    try:
        check_crm_schema(engine, triggers=False)
    except SchemaMismatch as exc:
        return {"schema_error": str(exc)}
    with engine.connect() as conn:
        missing = sorted(_expected_triggers(conn.dialect.name) - _existing_triggers(conn))
    return {"missing_triggers": missing}


def head_revision() -> tuple[str | None, set[str]]:
    """The latest migration this crmsync ships, and every revision it knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import schemas

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(schemas.__file__).parent / "migrations"))
    script = ScriptDirectory.from_config(cfg)
    return script.get_current_head(), {rev.revision for rev in script.walk_revisions()}


def probe_state(engine: Engine) -> dict[str, Any]:
    """The state database's migration level against the latest one."""
    from crmsync.adapters.database import state_revision

    try:
        revision = state_revision(engine)
    except Exception as exc:  # noqa: BLE001 - reported
        return {"error": _error(exc)}
    head, known = head_revision()
    facts: dict[str, Any] = {"revision": revision, "head": head, "known": revision is None or revision in known}
    if revision is not None and revision == head:
        facts["held_deletes"] = _held_deletes(engine)
    return facts


def _held_deletes(engine: Engine) -> list[tuple[str, str, int]]:
    """(mailbox, why, how many) of the deletes held now (why: brake | folder-empty | folder-missing)."""
    from sqlalchemy import func, select

    from schemas.state_tables import held_deletes as t

    query = (select(t.c.mailbox, t.c.reason, func.count()).where(t.c.status == "held")
             .group_by(t.c.mailbox, t.c.reason).order_by(t.c.mailbox, t.c.reason))
    with engine.connect() as conn:
        return [(mb, reason or "brake", int(n)) for mb, reason, n in conn.execute(query)]


def probe_redis(url: str, timeout_s: float = 2.0, *, master: str | None = None,
                sentinel_password: str | None = None) -> dict[str, Any]:
    """PING, the eviction policy and the persistence settings of the broker; for sentinel://
    first which sentinels answer and where they say the master ``master`` is (``sentinels``)."""
    from crmsync.adapters.redis_client import is_redis_url, is_sentinel_url, probe_sentinels, redis_client

    if not is_redis_url(url):
        return {"not_redis": True}
    import redis

    sentinels: dict[str, Any] | None = None
    if is_sentinel_url(url):
        if not master:
            return {"error": "a sentinel:// broker needs broker.sentinel_master"}
        sentinels = probe_sentinels(url, master, sentinel_password=sentinel_password, timeout_s=timeout_s)
        sentinels["name"] = master
        if not sentinels["answering"]:
            return {"error": f"no sentinel answers ({', '.join(sentinels['silent'])})", "sentinels": sentinels}
        if sentinels["master"] is None:
            return {"error": f"the sentinels do not know a master named {master!r}", "sentinels": sentinels}

    def connect() -> Any:
        return redis_client(url, master=master, sentinel_password=sentinel_password, timeout_s=timeout_s)

    client = connect()
    try:
        client.ping()
        info = client.info()
    except redis.RedisError as exc:
        return {"error": _error(exc), **({"sentinels": sentinels} if sentinels else {})}
    finally:
        client.close()
    facts: dict[str, Any] = {"version": info.get("redis_version"),
                             "maxmemory_policy": info.get("maxmemory_policy"),
                             "aof": bool(info.get("aof_enabled")) if "aof_enabled" in info else None}
    if sentinels is not None:
        facts["sentinels"] = sentinels
    client = connect()
    try:   # CONFIG may be renamed away on managed Redis; then the snapshot setting stays unknown
        facts["rdb"] = bool((client.config_get("save") or {}).get("save", "").strip())
    except redis.RedisError:
        facts["rdb"] = None
    finally:
        client.close()
    return facts


def probe_workers(settings: Settings, timeout_s: float = 2.0) -> dict[str, Any]:
    """Ping the Celery workers over the broker; for those that answer, the queues they consume."""
    from celery import Celery

    from crmsync.adapters.broker import broker_client
    from crmsync.adapters.redis_client import is_redis_url
    from crmsync.celery_settings import celery_settings

    url = settings.broker.dsn()
    if is_redis_url(url):
        import redis

        try:   # fail fast (Celery's own connection retries take much longer)
            broker_client(settings.broker, timeout_s=timeout_s).ping()
        except redis.RedisError as exc:
            return {"error": f"broker unreachable: {_error(exc)}"}
    app = Celery("crmsync-doctor", set_as_current=False)
    app.conf.update(celery_settings(url, settings.worker.queue_prefix, master_name=settings.broker.sentinel_master,
                                    sentinel_password=settings.broker.sentinel_password()))
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 1
    try:
        replies = app.control.ping(timeout=timeout_s) or []
        alive = sorted(name for reply in replies for name in reply)
        queues: dict[str, list[str]] = {name: [] for name in alive}
        if alive:
            active = app.control.inspect(destination=alive, timeout=timeout_s).active_queues() or {}
            for name, found in active.items():
                queues[name] = sorted(q.get("name", "?") for q in found)
        return {"workers": queues}
    except Exception as exc:  # noqa: BLE001 - reported
        return {"error": _error(exc)}
    finally:
        app.close()
