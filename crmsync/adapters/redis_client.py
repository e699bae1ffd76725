"""One way to get a Redis client on the broker: a plain ``redis://`` URL or Redis Sentinel.

    redis_client("redis://127.0.0.1:6379/0")
    redis_client("sentinel://s1:26379;sentinel://s2:26379/0", master="mymaster")

The sentinel form is Celery's (kombu's ``sentinel://`` transport): one ``sentinel://host:port``
per sentinel, joined by ``;``, an optional ``/db`` on any of them; the client asks the sentinels
where the master named ``master`` is now and follows it over a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "sentinel://"
SENTINEL_PORT = 26379


def is_redis_url(url: str) -> bool:
    """A broker URL crmsync can read with redis-py: ``redis://``, ``rediss://`` or ``sentinel://``."""
    return url.startswith(("redis://", "rediss://", SENTINEL_SCHEME))


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` broker URL."""

    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    password: str | None = None   # the master's (Redis AUTH), as in redis://:password@host

    def render(self) -> str:
        """The URL again with the db and the password on every part (kombu reads both from the
        first part, people write the db on the last)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.nodes)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError saying what is wrong (never echoing a password)."""
    nodes: list[tuple[str, int]] = []
    dbs: set[int] = set()
    passwords: set[str] = set()
    for part in url.split(";"):
        part = part.strip()
        if not part.startswith(SENTINEL_SCHEME):
            raise ValueError("every part of a sentinel broker URL starts with sentinel:// "
                             "(sentinel://host:26379;sentinel://host2:26379/0)")
        split = urlsplit(part)
        try:
            host, port = split.hostname, split.port or SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel part {len(nodes) + 1}: the port is not a number") from None
        if not host:
            raise ValueError(f"sentinel part {len(nodes) + 1}: no host")
        path = split.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"sentinel part {len(nodes) + 1}: the database is not a number (/0)")
            dbs.add(int(path))
        if split.password:
            passwords.add(unquote(split.password))
        nodes.append((host, port))
    if len(dbs) > 1:
        raise ValueError("the sentinel parts name different databases; give the /db once")
    if len(passwords) > 1:
        raise ValueError("the sentinel parts carry different passwords")
    return SentinelUrl(tuple(nodes), dbs.pop() if dbs else 0, passwords.pop() if passwords else None)


def with_password(url: str, password: str) -> str:
    """``url`` (sentinel://) with the master's password on every part."""
    parsed = parse_sentinel_url(url)
    return SentinelUrl(parsed.nodes, parsed.db, password).render()


def redis_client(url: str, *, master: str | None = None, sentinel_password: str | None = None,
                 timeout_s: float = 2.0, connect_timeout_s: float | None = None) -> Any:
    """A ``redis.Redis`` on the broker: ``from_url`` for redis://, the current master (asked of
    the sentinels) for sentinel://. ``master`` is required with sentinel://."""
    import redis

    connect = timeout_s if connect_timeout_s is None else connect_timeout_s
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, socket_connect_timeout=connect, socket_timeout=timeout_s)
    if not master:
        raise ValueError("a sentinel:// broker needs the master's name (broker.sentinel_master)")
    return sentinel(url, sentinel_password=sentinel_password, timeout_s=timeout_s,
                    connect_timeout_s=connect).master_for(
        master, db=parse_sentinel_url(url).db, password=parse_sentinel_url(url).password,
        socket_timeout=timeout_s, socket_connect_timeout=connect)


def sentinel(url: str, *, sentinel_password: str | None = None, timeout_s: float = 2.0,
             connect_timeout_s: float | None = None) -> Any:
    """A ``redis.sentinel.Sentinel`` on the sentinels of a sentinel:// URL."""
    from redis.sentinel import Sentinel

    connect = timeout_s if connect_timeout_s is None else connect_timeout_s
    kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": connect}
    if sentinel_password:
        kwargs["password"] = sentinel_password
    return Sentinel(list(parse_sentinel_url(url).nodes), sentinel_kwargs=kwargs,
                    socket_timeout=timeout_s, socket_connect_timeout=connect)


def probe_sentinels(url: str, master: str, *, sentinel_password: str | None = None,
                    timeout_s: float = 2.0) -> dict[str, Any]:
    """Which sentinels answer, and where they say the master is:
    {"answering": [...], "silent": [...], "master": "host:port" | None}."""
    import redis

    answering: list[str] = []
    silent: list[str] = []
    found: str | None = None
    for host, port in parse_sentinel_url(url).nodes:
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if sentinel_password:
            kwargs["password"] = sentinel_password
        client = redis.Redis(host=host, port=port, **kwargs)
        try:
            address = client.sentinel_get_master_addr_by_name(master)
            answering.append(f"{host}:{port}")
            if address and found is None:
                host_found = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
                found = f"{host_found}:{address[1]}"
        except redis.RedisError:
            silent.append(f"{host}:{port}")
        finally:
            client.close()
    return {"answering": answering, "silent": silent, "master": found}
