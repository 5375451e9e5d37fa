"""The store contract's fixture: `stores`, one per store kind, each test run against all:
`memory` (stores/memory.py), `redis` (the test Redis of tests/conftest.py), `cluster` (a
private 3-master Redis Cluster) and `sentinel` (a private Sentinel group), each started once
per session. A failing test names its kind in its id.

`await stores.new(lock_ttl=0.5)` makes a store (limits by keyword); every store of one test
shares one backend (the same key prefix on the same Redis, or one `MemoryBackend`), so a
second store is "another process". `stores.wait_out(s)` moves the memory backend's clock
(real Redis needs real time: the test then polls against a deadline); `stores.now()` reads
the same clock. `stores.frozen_holder(key)` is a process stopped while it holds a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from core.model import ContextKey
from stores.redis.health import StoreLimits

LIMITS = StoreLimits(lock_wait=10.0)  # a broken lock fails a test, not hangs it 2 minutes
HEARTBEAT_TTL = 15.0

Close = Callable[[], Awaitable[None]]
Opener = Callable[[StoreLimits, float], Awaitable[tuple[Any, Close]]]


KINDS = ["memory", "redis", "cluster", "sentinel"]


class Clock:
    """The backend's time. Real by default (only waiting moves it); a movable one runs ahead
    of real time by what `move` was given."""

    def __init__(self, *, movable: bool = False) -> None:
        self.movable = movable
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def move(self, seconds: float) -> None:
        assert self.movable
        self.ahead += seconds


async def _nothing() -> None:
    pass


@dataclass
class Backend:
    """A kind's backend: how to open a store on it, its clock, how to delete the test's keys."""

    kind: str
    open: Opener
    clock: Clock
    clean: Close = _nothing


@dataclass
class Stores:
    """Makes stores of one kind on one backend; closes them after the test."""

    backend: Backend
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def kind(self) -> str:
        return self.backend.kind

    async def new(self, *, heartbeat_ttl: float = HEARTBEAT_TTL, **limits: Any) -> Any:
        """A store (another process on the same backend), with `limits` over `LIMITS`."""
        store, close = await self.backend.open(replace(LIMITS, **limits), heartbeat_ttl)
        self._stack.push_async_callback(close)
        return store

    def now(self) -> float:
        return self.backend.clock()

    async def wait_out(self, seconds: float) -> None:
        """Let `seconds` pass on a backend whose clock can be moved; on real time, nothing
        (the caller polls with a deadline)."""
        if self.backend.clock.movable:
            self.backend.clock.move(seconds)

    @contextlib.asynccontextmanager
    async def frozen_holder(self, key: ContextKey, **limits: Any) -> AsyncIterator[None]:
        """A process that takes `key`'s lock and then stops (SIGSTOP, a crash): a store on
        an event loop of its own, which stops running once the lock is held, so the store
        neither extends nor releases it. Resumed on the way out to close its store."""
        loop = asyncio.new_event_loop()

        async def enter() -> tuple[Any, Close]:
            store, close = await self.backend.open(replace(LIMITS, **limits), HEARTBEAT_TTL)
            holding = store.lock(key)
            await holding.__aenter__()
            return holding, close

        holding, close = await asyncio.to_thread(loop.run_until_complete, enter())
        try:
            yield
        finally:

            async def leave() -> None:
                try:
                    await holding.__aexit__(None, None, None)
                finally:
                    await close()
                    await loop.shutdown_asyncgens()

            try:
                await asyncio.to_thread(loop.run_until_complete, leave())
            finally:
                loop.close()

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            await self.backend.clean()


@pytest.fixture(params=KINDS)
def store_kind(request: pytest.FixtureRequest, key_prefix: str) -> Backend:
    """The kind's backend (its session servers started here, outside the test's loop)."""
    kind: str = request.param
    return Backend(kind, *OPENERS[kind](request, key_prefix))


@pytest.fixture
async def stores(store_kind: Backend) -> AsyncIterator[Stores]:
    kit = Stores(store_kind)
    try:
        yield kit
    finally:
        await kit.aclose()


async def _close_journal(store: Any) -> None:
    await store.journal.stop()  # a started heartbeat ends with its test


Made = tuple[Opener, Clock, Close]


def _memory(request: pytest.FixtureRequest, prefix: str) -> Made:
    from stores.memory import MemoryBackend, MemoryStore

    clock = Clock(movable=True)
    backend = MemoryBackend(clock=clock)

    async def open_store(limits: StoreLimits, heartbeat_ttl: float) -> tuple[Any, Close]:
        store = MemoryStore(backend, limits, heartbeat_ttl=heartbeat_ttl)
        return store, lambda: _close_journal(store)

    return open_store, clock, _nothing


def _on_redis(prefix: str, client: Callable[[], tuple[Any, Close]]) -> Made:
    """Stores on clients from `client()` (each store its own, as each process has); the
    test's keys (its prefix) deleted after it."""
    from stores.redis.keys import KeyBuilder
    from stores.redis.store import RedisStore

    async def open_store(limits: StoreLimits, heartbeat_ttl: float) -> tuple[Any, Close]:
        redis, close_client = client()
        store = RedisStore(redis, KeyBuilder(prefix), limits, heartbeat_ttl=heartbeat_ttl)

        async def close() -> None:
            try:
                await _close_journal(store)
            finally:
                await close_client()

        return store, close

    async def clean() -> None:
        redis, close_client = client()
        try:
            async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
                await redis.delete(key)  # one by one: a cluster's keys are in many slots
        finally:
            await close_client()

    return open_store, Clock(), clean


def _redis(request: pytest.FixtureRequest, prefix: str) -> Made:
    """The test Redis of tests/conftest.py."""
    from bots.redis_conn import make_client

    url: str = request.getfixturevalue("redis_url")

    def client() -> tuple[Any, Close]:
        redis = make_client(url)
        return redis, redis.aclose

    return _on_redis(prefix, client)


def _cluster(request: pytest.FixtureRequest, prefix: str) -> Made:
    """The session's cluster (tests/conftest.py's `redis_cluster` where it exists)."""
    from redis.asyncio.cluster import RedisCluster

    from bots import redis_conn

    try:
        cluster = request.getfixturevalue("redis_cluster")
    except pytest.FixtureLookupError:
        cluster = request.getfixturevalue("contract_cluster")
    make = getattr(redis_conn, "make_cluster_client", None) or RedisCluster.from_url

    def client() -> tuple[Any, Close]:
        redis = make(cluster.url)
        return redis, redis.aclose

    return _on_redis(prefix, client)


def _sentinel(request: pytest.FixtureRequest, prefix: str) -> Made:
    """The master of the session's Sentinel group, opened as `chatbot run` opens it."""
    from bots.redis_conn import make_sentinel_client
    from core.config import RedisSettings
    from tests.redis_sentinel import SERVICE

    group = request.getfixturevalue("sentinel_group")
    settings = RedisSettings(sentinels=group.addresses, service_name=SERVICE)

    def client() -> tuple[Any, Close]:
        redis, sentinel = make_sentinel_client(settings)

        async def close() -> None:
            await redis.aclose()
            await sentinel.aclose()

        return redis, close

    return _on_redis(prefix, client)


OPENERS: dict[str, Callable[[pytest.FixtureRequest, str], Made]] = {
    "memory": _memory,
    "redis": _redis,
    "cluster": _cluster,
    "sentinel": _sentinel,
}


@pytest.fixture(scope="session")
def contract_cluster() -> Iterator[Any]:
    """A private Redis Cluster for the session, where tests/conftest.py has none."""
    from tests.redis_cluster import cluster_running

    with cluster_running() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Sentinel group (1 master, 1 replica, 3 sentinels) for the session."""
    from tests.redis_sentinel import SentinelGroup

    group = SentinelGroup(Path(tmp_path_factory.mktemp("sentinel")))
    try:
        group.start()
        yield group
    finally:
        group.stop()
