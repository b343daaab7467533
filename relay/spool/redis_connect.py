"""Where the Redis spool connects: one server named by its URL, or the master that Redis
Sentinel names for a service.

With Sentinel, redis-py's own client (``redis.asyncio.sentinel.Sentinel``) asks the sentinels
for the master before each new connection and drops connections to a master that was demoted
(a ``READONLY`` answer), so a failover needs nothing from the spool but to retry: commands fail
(ingest answers 503) until Sentinel has promoted a replica, then go to the new master.

Redis Cluster is refused, at load where the URL says so and at start-up where the server says
so: the spool's scripts compute the keys they touch, which Cluster cannot route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..schema import ConfigError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SENTINEL_PORT = 26379
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
CLUSTER_REFUSED = (
    "Redis Cluster is not supported: the spool's scripts need all of a queue's keys on one "
    "server; use one Redis server (with replicas and Sentinel for failover)"
)
CONNECT_TIMEOUT_S = 5.0
# A command unanswered this long fails (ingest answers 503) instead of hanging on a frozen or
# partitioned server; the spool's scripts take milliseconds.
COMMAND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisEndpoint:
    """A validated place to connect to. ``url`` is the server's URL or, with ``sentinels``,
    only the master's options (user, password, db, TLS, query options) without a host."""

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """For logs and errors: never a password."""
        if not self.sentinels:
            return redact_redis_url(self.url)
        hosts = ",".join(_join_host(h, p) for h, p in self.sentinels)
        db = urlsplit(self.url).path.strip("/") or "0"
        scheme = "rediss" if self.url.startswith("rediss:") else "redis"
        return f"{scheme}+sentinel://{hosts}/{self.service_name}/{db}"

    def secrets(self) -> list[str]:
        """Passwords to scrub from a driver's error text."""
        found = [urlsplit(self.url).password or "", self.sentinel_password or ""]
        return [s for s in found if s]

    def connect(self) -> RedisConnection:
        """A client (not yet connected: the first command connects)."""
        import redis.asyncio as aioredis

        timeouts = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": COMMAND_TIMEOUT_S,
        }
        if not self.sentinels:
            return RedisConnection(aioredis.Redis.from_url(self.url, **timeouts), [])
        from redis.asyncio.connection import parse_url
        from redis.asyncio.sentinel import Sentinel

        options: dict[str, Any] = dict(parse_url(self.url))
        options.pop("host", None)
        options.pop("port", None)
        tls = options.pop("connection_class", None) is not None  # rediss: SSLConnection
        sentinel_options: dict[str, Any] = {**timeouts, "password": self.sentinel_password}
        if tls:  # the sentinels speak TLS too, with the same certificate options
            sentinel_options["ssl"] = True
            sentinel_options.update((k, v) for k, v in options.items() if k.startswith("ssl_"))
        sentinel = Sentinel(self.sentinels, sentinel_kwargs=sentinel_options)
        master = sentinel.master_for(self.service_name, ssl=tls, **timeouts, **options)
        return RedisConnection(master, list(sentinel.sentinels))


class RedisConnection:
    """The client the spool talks to, and the sentinel clients behind it, closed together."""

    def __init__(self, client: Any, others: list[Any]) -> None:
        self.client = client
        self._others = others

    async def aclose(self) -> None:
        for other in self._others:
            await other.aclose()
        await self.client.aclose()


def redact_redis_url(url: str) -> str:
    """The URL without its user, password and query, fit for logs and error messages."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{hosts}{parts.path}"


def redis_endpoint(
    url: str, sentinels: Sequence[str], service_name: str, sentinel_password: str | None
) -> RedisEndpoint:
    """Check the spool's connection keys; errors name the key (relative to ``spool``) and never
    quote the URL, which may carry the password."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if "cluster" in scheme:
        raise ConfigError("url", CLUSTER_REFUSED)
    if scheme == "sentinel":
        raise ConfigError(
            "url", "write a Sentinel URL as redis+sentinel:// (or rediss+sentinel:// for TLS)"
        )
    if scheme in SENTINEL_SCHEMES:
        if sentinels or service_name:
            raise ConfigError(
                "url", "name the sentinels in the url or in sentinels/service_name, not both"
            )
        return _sentinel_url(url, SENTINEL_SCHEMES[scheme], sentinel_password)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "url", "expected redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
        )
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number 0-65535)
    except ValueError:
        raise ConfigError("url", "the port must be a number from 0 to 65535") from None
    if not sentinels:
        if service_name:
            raise ConfigError("service_name", "needs sentinels (the Sentinel addresses)")
        if sentinel_password is not None:
            raise ConfigError("sentinel_password", "needs sentinels (the Sentinel addresses)")
        return RedisEndpoint(url)
    if scheme == "unix":
        raise ConfigError("url", "with sentinels, use redis:// or rediss://, not unix://")
    if parts.hostname and url != DEFAULT_URL:
        raise ConfigError(
            "url",
            "with sentinels, the url gives only the password, db and TLS (redis://:PASSWORD@/0);"
            " Sentinel names the master",
        )
    hosts = tuple(
        _host_port(text, f"sentinels[{i}]", SENTINEL_PORT) for i, text in enumerate(sentinels)
    )
    if not service_name:
        raise ConfigError("service_name", "required with sentinels (the name Sentinel monitors)")
    userinfo = parts.netloc.rpartition("@")[0]
    options = _options_url(scheme, userinfo, parts.path.strip("/") or "0", parts.query)
    return RedisEndpoint(options, hosts, service_name, sentinel_password)


def _sentinel_url(url: str, scheme: str, sentinel_password: str | None) -> RedisEndpoint:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if not hostlist:
        raise ConfigError("url", "name at least one sentinel: redis+sentinel://HOST:PORT/SERVICE")
    hosts = tuple(
        _host_port(text, "url", SENTINEL_PORT) for text in hostlist.split(",") if text.strip()
    )
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(
            "url",
            "expected the service name and an optional db after the sentinels: "
            "redis+sentinel://HOST:PORT/SERVICE/DB",
        )
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ConfigError("url", "the db after the service name must be a number")
    options = _options_url(scheme, userinfo, db, parts.query)
    return RedisEndpoint(options, hosts, path[0], sentinel_password)


def _options_url(scheme: str, userinfo: str, db: str, query: str) -> str:
    """A host-less URL that carries only the master's options, for redis-py's parse_url."""
    auth = f"{userinfo}@" if userinfo else ""
    return f"{scheme}://{auth}/{db}" + (f"?{query}" if query else "")


def _host_port(text: str, path: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; errors name ``path``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or any(c.isspace() or c in "/@," for c in host):
        raise ConfigError(path, "expected HOST:PORT for each sentinel")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(path, "a sentinel's port must be a number from 1 to 65535")
    return host, int(port_text)


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every password replaced."""
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text
