"""2 Redis round trips per chat turn (one read, one write), the conversation lock included.

Measured with a counting connection: every network write of the redis client is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import ClassVar

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from tests.helpers import RecordingResponder, user_message

HANDSHAKE = (b"HELLO", b"CLIENT", b"SELECT", b"AUTH")


def counting(base: type[Connection]) -> type[Connection]:
    class CountingConnection(base):  # type: ignore[misc, valid-type]
        writes: ClassVar[list[bytes]] = []

        async def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            payload = (
                command
                if isinstance(command, bytes)
                else b"".join(c.encode() if isinstance(c, str) else c for c in command)
            )
            CountingConnection.writes.append(payload)
            return await super().send_packed_command(command, check_health)

    return CountingConnection


@asynccontextmanager
async def counted_core(
    standalone_redis_url: str, settings: Settings, secrets: Secrets
) -> AsyncIterator[tuple[Core, Redis, type[Connection]]]:
    """A core on a Redis client whose every network write is recorded, warmed up."""
    base = UnixDomainSocketConnection if standalone_redis_url.startswith("unix") else Connection
    connection_class = counting(base)
    client = Redis.from_url(standalone_redis_url, connection_class=connection_class)
    await client.ping()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        core = await build_core(stack, settings, secrets, redis=client)
        await core.handler(user_message("warm up"), RecordingResponder())
        yield core, client, connection_class


async def test_a_chat_turn_is_two_round_trips_with_its_lock(
    standalone_redis_url: str, settings: Settings, secrets: Secrets, redis: Redis
):
    async with counted_core(standalone_redis_url, settings, secrets) as (
        core,
        client,
        connection_class,
    ):
        for turn in range(3):
            connection_class.writes.clear()
            responder = RecordingResponder()
            await core.handler(user_message(f"turn {turn}"), responder)
            assert responder.shown == f"echo: turn {turn}"
            data = [w for w in connection_class.writes if not any(h in w[:40] for h in HANDSHAKE)]
            assert len(data) == 2, data
            read, write = data
            assert read.index(b":lock") < read.index(b"LRANGE")  # the lock is taken first
            assert b"HGETALL" in read  # one pipelined read
            assert b"MULTI" in write and b"RPUSH" in write  # one transactional write ...
            script = write.index(b"RPUSH")  # ... whose turn script also releases the lock
            assert b":lock" in write[script:] and b"EXEC" in write[script:]
        assert not await client.keys(f"{settings.redis.key_prefix}*:lock")


async def test_a_delivered_message_is_three_round_trips_its_claim_included(
    standalone_redis_url: str, settings: Settings, secrets: Secrets, redis: Redis
):
    """The delivery claim (dedupe and the place in the conversation's pending set) is one
    round trip when the message arrives; the place leaves in the turn's own write."""
    async with counted_core(standalone_redis_url, settings, secrets) as (
        core,
        client,
        connection_class,
    ):
        for turn in range(3):
            connection_class.writes.clear()
            message = replace(user_message(f"turn {turn}"), delivery_id=f"d{turn}",
                              order=f"{turn:020d}")  # fmt: skip
            await core.handler(message, RecordingResponder())
            data = [w for w in connection_class.writes if not any(h in w[:40] for h in HANDSHAKE)]
            assert len(data) == 3, data
            claim, _, write = data
            assert b":pending" in claim and b":seen:" in claim
            assert b"ZREM" in write and write.index(b"ZREM") < write.index(b"EXEC")
        # every place left its pending set (an empty sorted set is no key at all)
        assert not await client.keys(f"{settings.redis.key_prefix}*:pending")
