"""The bot's client on a real private Redis Cluster (3 masters, tests/redis_cluster.py), opened
as `chatbot run` opens it (`redis.mode: cluster`, `REDIS_URL` naming one node), and what the
store can rely on there: a transaction (EVAL included) over keys sharing one hash tag is one
MULTI/EXEC on the slot's master, all or nothing; one over two tags is refused before anything
is sent, and a plain pipeline over several tags (so several nodes) answers in order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import CrossSlotTransactionError, WatchError

from bots.redis_conn import RedisStartError, make_cluster_client, open_redis
from core.config import ConfigError, Secrets, load_settings
from tests.redis_cluster import SLOTS, Cluster, cluster_info
from tests.redis_server import RedisProcess, free_port

# EVAL inside a transaction: b becomes a copy of a, read inside the script
COPY = "redis.call('SET', KEYS[2], redis.call('GET', KEYS[1])) return redis.call('GET', KEYS[2])"
BUMP = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def prefix() -> str:
    """Outside the hash tag, so it changes no key's slot: `t-1a2b:{conv}:a` is in {conv}'s."""
    return f"t-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def cluster_client(redis_cluster: Cluster, prefix: str) -> AsyncIterator[RedisCluster]:
    client = make_cluster_client(redis_cluster.url)
    try:
        await client.initialize()  # the slot map, for get_node_from_key
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        for key in keys:  # one by one: a DEL over several slots is refused
            await client.delete(key)
        await client.aclose()


def _port_of(client: RedisCluster, key: str) -> int:
    """The port of the master of `key`'s slot, from the client's slot map."""
    node = client.get_node_from_key(key)
    assert node is not None
    return int(node.port)


def _node_of(cluster: Cluster, client: RedisCluster, key: str) -> int:
    return cluster.ports.index(_port_of(client, key))


def _commandstat(cluster: Cluster, port: int, command: str) -> int:
    node = next(node for node in cluster.nodes if node.port == port)
    with node.client() as client:
        stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_open_redis_in_cluster_mode_reaches_every_node(
    redis_cluster: Cluster, tmp_path: Path, prefix: str
) -> None:
    for node in redis_cluster.nodes:
        with node.client() as plain:
            info = cluster_info(plain.execute_command("CLUSTER", "INFO"))
        assert info["cluster_state"] == "ok" and info["cluster_slots_ok"] == str(SLOTS)

    settings = load_settings(_config(tmp_path, "redis:\n  mode: cluster\n"), environ={})
    assert settings.redis.mode == "cluster"
    async with AsyncExitStack() as stack:
        client, described = await open_redis(
            stack, settings, Secrets(redis_url=SecretStr(redis_cluster.url))
        )
        assert isinstance(client, RedisCluster)
        assert described == f"cluster {redis_cluster.url}"
        # one key per master, found by their slots; the client was told of one node only
        keys: dict[int, str] = {}
        for number in range(200):
            key = f"{prefix}{{k{number}}}"
            keys.setdefault(_node_of(redis_cluster, client, key), key)
        assert sorted(keys) == [0, 1, 2]
        for index, key in keys.items():
            assert await client.set(key, f"v{index}")
        for index, key in keys.items():
            assert await client.get(key) == f"v{index}".encode()
        # and each key is on its slot's master itself, not only reachable through redirects
        for index, key in keys.items():
            with redis_cluster.nodes[index].client() as plain:
                assert plain.get(key) == f"v{index}"
        for key in keys.values():
            await client.delete(key)


async def test_a_transaction_over_one_hash_tag_is_atomic(
    redis_cluster: Cluster, cluster_client: RedisCluster, prefix: str
) -> None:
    a, b = f"{prefix}{{conv}}:a", f"{prefix}{{conv}}:b"
    port = _port_of(cluster_client, a)
    execs = _commandstat(redis_cluster, port, "exec")

    async with cluster_client.pipeline(transaction=True) as pipe:
        pipe.set(a, 5)
        pipe.incr(a)
        pipe.eval(COPY, 2, a, b)
        assert await pipe.execute() == [True, 6, b"6"]
    assert await cluster_client.mget(a, b) == [b"6", b"6"]
    # sent as MULTI/EXEC to the slot's master, not as loose commands
    assert _commandstat(redis_cluster, port, "exec") == execs + 1

    # all or nothing: a transaction whose watched key another client changed runs none of
    # its commands (EVAL included)
    async with cluster_client.pipeline(transaction=True) as pipe:
        await pipe.watch(a)
        await cluster_client.set(a, 100)  # another client, between WATCH and EXEC
        pipe.multi()
        pipe.incr(a)
        pipe.eval(COPY, 2, a, b)
        with pytest.raises(WatchError):
            await pipe.execute()
    assert await cluster_client.mget(a, b) == [b"100", b"6"]
    assert _commandstat(redis_cluster, port, "exec") == execs + 2


async def test_a_transaction_over_two_hash_tags_is_refused(
    cluster_client: RedisCluster, prefix: str
) -> None:
    a, other = f"{prefix}{{conv}}:a", f"{prefix}{{other}}:b"
    assert cluster_client.keyslot(a) != cluster_client.keyslot(other)
    with pytest.raises(CrossSlotTransactionError):
        async with cluster_client.pipeline(transaction=True) as pipe:
            pipe.set(a, 1)
            pipe.set(other, 2)
            await pipe.execute()
    # refused before anything was sent: neither key was written
    assert await cluster_client.get(a) is None and await cluster_client.get(other) is None


async def test_a_plain_pipeline_across_nodes_answers_in_order(
    redis_cluster: Cluster, cluster_client: RedisCluster, prefix: str
) -> None:
    x, y, h = f"{prefix}{{u1}}:x", f"{prefix}{{u2}}:y", f"{prefix}{{c}}:h"
    await cluster_client.set(x, 10)
    await cluster_client.hset(y, "field", "value")
    await cluster_client.rpush(h, "one", "two")
    nodes = [_node_of(redis_cluster, cluster_client, key) for key in (x, y, h)]
    assert len(set(nodes)) > 1  # the pipeline is split over nodes and put back in order

    async with cluster_client.pipeline(transaction=False) as pipe:
        pipe.eval(BUMP, 1, x, 5)
        pipe.hget(y, "field")
        pipe.lrange(h, 0, -1)
        pipe.get(x)
        pipe.eval(BUMP, 1, x, 1)
        assert await pipe.execute() == [15, b"value", [b"one", b"two"], b"15", 16]


async def test_cluster_mode_with_sentinels_is_refused(tmp_path: Path) -> None:
    text = "redis:\n  mode: cluster\n  sentinels: ['127.0.0.1:26379']\n"
    settings = load_settings(_config(tmp_path, text), environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError) as caught:
            await open_redis(
                stack, settings, Secrets(redis_url=SecretStr("redis://127.0.0.1:7000"))
            )
    assert "redis.mode" in str(caught.value) and "redis.sentinels" in str(caught.value)


async def test_cluster_mode_without_redis_url_is_refused(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, "redis:\n  mode: cluster\n"), environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError) as caught:
            await open_redis(stack, settings, Secrets())
    assert "redis.mode" in str(caught.value) and "REDIS_URL" in str(caught.value)
    assert not (tmp_path / "data").exists()  # no embedded Redis was started instead


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7000/1", "unix:///tmp/redis.sock"])
async def test_cluster_mode_refuses_a_database_or_a_socket(tmp_path: Path, url: str) -> None:
    settings = load_settings(_config(tmp_path, "redis:\n  mode: cluster\n"), environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match=r"REDIS_URL .* redis.mode cluster"):
            await open_redis(stack, settings, Secrets(redis_url=SecretStr(url)))


def test_an_unknown_mode_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, "redis:\n  mode: clustered\n"), environ={})
    assert str(caught.value).startswith(f"{tmp_path / 'config.yaml'}: redis.mode: ")


async def test_an_unreachable_cluster_fails_the_start_clearly(tmp_path: Path) -> None:
    url = f"redis://:pw-not-shown@127.0.0.1:{free_port()}"
    settings = load_settings(_config(tmp_path, "redis:\n  mode: cluster\n"), environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(RedisStartError) as caught:
            await open_redis(stack, settings, Secrets(redis_url=SecretStr(url)))
    message = str(caught.value)
    assert "cluster redis://:***@127.0.0.1:" in message and "REDIS_URL" in message
    assert "pw-not-shown" not in message


async def test_a_standalone_server_is_not_taken_for_a_cluster(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    settings = load_settings(_config(tmp_path, "redis:\n  mode: cluster\n"), environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(RedisStartError, match="Cluster mode is not enabled"):
            await open_redis(stack, settings, Secrets(redis_url=SecretStr(redis_process.url)))
