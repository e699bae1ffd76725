"""``[broker]`` over Redis Sentinel: Celery's ``sentinel://`` URL form, ``sentinel_master``
required with it, passwords only from variables, and the Celery transport options it makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.adapters.redis_client import parse_sentinel_url
from crmsync.celery_settings import VISIBILITY_TIMEOUT_S, celery_settings
from crmsync.config import load_settings
from crmsync.errors import ConfigError

SENTINELS = "sentinel://s1.internal:26379;sentinel://s2.internal:26380;sentinel://s3.internal/2"


def load(tmp_path: Path, broker: str, env: dict[str, str] | None = None):
    path = tmp_path / "crmsync.toml"
    path.write_text(f"[broker]\n{broker}\n", encoding="utf-8")
    return load_settings(str(path), env=env or {})


def test_sentinel_url_with_master_is_accepted(tmp_path: Path) -> None:
    s = load(tmp_path, f'url = "{SENTINELS}"\nsentinel_master = "mymaster"')
    assert s.broker.sentinel_master == "mymaster"
    # kombu reads the db from the first part: it is put on every part
    assert s.broker.dsn() == ("sentinel://s1.internal:26379/2;sentinel://s2.internal:26380/2;"
                              "sentinel://s3.internal:26379/2")


def test_sentinel_url_without_master_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker\.sentinel_master: a sentinel:// broker URL needs the master's name"):
        load(tmp_path, f'url = "{SENTINELS}"')


def test_sentinel_master_with_a_plain_redis_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker\.sentinel_master: only for a sentinel:// broker URL"):
        load(tmp_path, 'url = "redis://redis.internal:6379/0"\nsentinel_master = "mymaster"')


@pytest.mark.parametrize(("url", "why"), [
    ("sentinel://s1:26379;redis://s2:6379", "every part of a sentinel broker URL starts with sentinel://"),
    ("sentinel://s1:notaport", "sentinel part 1: the port is not a number"),
    ("sentinel://s1:26379/0;sentinel://s2:26379/1", "different databases"),
    ("sentinel://s1:26379/zero", "the database is not a number"),
])
def test_a_malformed_sentinel_url_says_what_is_wrong(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load(tmp_path, f'url = "{url}"\nsentinel_master = "mymaster"')


def test_passwords_come_from_variables_and_never_from_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, f'url = "{SENTINELS}"\nsentinel_master = "m"\nsentinel_password = "Tr0ub4dor&3"')
    assert "broker.sentinel_password_env" in str(excinfo.value)
    assert "Tr0ub4dor" not in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, 'url = "sentinel://:Tr0ub4dor&3@s1:26379"\nsentinel_master = "m"')
    assert "broker.password_env" in str(excinfo.value)
    assert "Tr0ub4dor" not in str(excinfo.value)

    s = load(tmp_path, f'url = "{SENTINELS}"\nsentinel_master = "m"\npassword_env = "REDIS_PW"\n'
                       'sentinel_password_env = "SENTINEL_PW"', env={"REDIS_PW": "m@ster", "SENTINEL_PW": "s3nt"})
    assert s.broker.sentinel_password() == "s3nt"
    assert parse_sentinel_url(s.broker.dsn()).password == "m@ster"
    assert "m@ster" not in repr(s.broker)


def test_a_named_but_unset_sentinel_password_variable_is_reported(tmp_path: Path) -> None:
    s = load(tmp_path, f'url = "{SENTINELS}"\nsentinel_master = "m"\nsentinel_password_env = "SENTINEL_PW"')
    with pytest.raises(ConfigError, match=r"broker\.sentinel_password_env: environment variable SENTINEL_PW is not set"):
        s.broker.sentinel_password()


def test_celery_gets_the_master_name_and_the_sentinels_password() -> None:
    options = celery_settings("sentinel://s1:26379/0", master_name="mymaster",
                              sentinel_password="s3nt")["broker_transport_options"]
    assert options == {"visibility_timeout": VISIBILITY_TIMEOUT_S, "master_name": "mymaster",
                       "sentinel_kwargs": {"password": "s3nt"}}
    assert celery_settings("sentinel://s1:26379/0", master_name="mymaster")["broker_transport_options"] == {
        "visibility_timeout": VISIBILITY_TIMEOUT_S, "master_name": "mymaster"}


def test_a_plain_redis_broker_keeps_its_options() -> None:
    assert celery_settings("redis://r:6379/0")["broker_transport_options"] == {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    assert celery_settings("sqla+sqlite:///b.db")["broker_transport_options"] == {}


class _RedisFacts:
    """The doctor's probes, only the Redis one (what crmsync.adapters.diagnostics.probe_redis reports)."""

    def __init__(self, facts: dict) -> None:
        self.facts = facts

    def redis(self) -> dict:
        return self.facts


HEALTHY = {"version": "7.2", "maxmemory_policy": "noeviction", "aof": True, "rdb": False}


@pytest.mark.parametrize(("sentinels", "status", "words"), [
    ({"answering": ["s1:26379", "s2:26379"], "silent": [], "master": "10.0.0.5:6379", "name": "mymaster"},
     "OK", "2 of 2 sentinel(s) answer; master 'mymaster' at 10.0.0.5:6379"),
    ({"answering": ["s1:26379"], "silent": ["s2:26379"], "master": "10.0.0.5:6379", "name": "mymaster"},
     "WARN", "silent: s2:26379"),
])
def test_doctor_reports_the_sentinels_and_the_master(sentinels: dict, status: str, words: str) -> None:
    from crmsync.service.doctor import check_redis

    checks = {c.name: c for c in check_redis(_RedisFacts({**HEALTHY, "sentinels": sentinels}), "sentinel://s1")}  # type: ignore[arg-type]
    assert checks["redis.sentinel"].status == status
    assert words in checks["redis.sentinel"].detail
    assert checks["redis"].status == "OK"


def test_doctor_fails_when_no_sentinel_answers() -> None:
    from crmsync.service.doctor import check_redis

    sentinels = {"answering": [], "silent": ["s1:26379"], "master": None, "name": "mymaster"}
    checks = {c.name: c for c in check_redis(_RedisFacts({"error": "no sentinel answers (s1:26379)",  # type: ignore[arg-type]
                                                          "sentinels": sentinels}), "sentinel://s1")}
    assert checks["redis.sentinel"].status == "FAIL"
    assert "start the sentinels" in checks["redis.sentinel"].fix
    assert checks["redis"].status == "FAIL"


def test_doctor_shows_no_sentinel_check_for_a_plain_redis() -> None:
    from crmsync.service.doctor import check_redis

    assert "redis.sentinel" not in {c.name for c in check_redis(_RedisFacts(HEALTHY), "redis://r")}  # type: ignore[arg-type]
