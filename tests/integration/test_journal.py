"""The answer journal: entries of dead processes are claimed exactly once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.codec import message_from_json, message_to_json
from core.model import Attachment, Command, ContextKey, MediaKind, Message, User
from stores.redis.journal import RedisJournal
from stores.redis.keys import KeyBuilder
from tests.helpers import wait_for


def _message(i: int = 1) -> Message:
    return Message(
        platform="slack",
        key=ContextKey("slack", channel="C1", user="U1", workspace="T1", thread="1.2"),
        user=User("U1", "Ann", is_admin=True),
        text="héllo",
        message_id=f"m{i}",
        command=Command("ask", "x"),
        attachments=(Attachment("a.png", "image/png", "http://x", 3, MediaKind.IMAGE),),
    )


def test_message_json_round_trip():
    assert message_from_json(message_to_json(_message())) == _message()
    assert json.loads(message_to_json(_message())) == json.loads(json.dumps(asdict(_message())))
    assert message_from_json("{not json") is None


def _journal(redis: Redis, prefix: str, heartbeat_ttl: float = 15.0) -> RedisJournal:
    return RedisJournal(redis, KeyBuilder(prefix), heartbeat_ttl=heartbeat_ttl)


async def test_orphans_of_a_dead_owner_are_claimed_once(redis: Redis, key_prefix: str):
    dead = _journal(redis, key_prefix, heartbeat_ttl=0.2)
    await dead.start()
    telegram = Message("telegram", ContextKey("telegram", "9"), User("1"), "t", "x")
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(5):
            dead.queue_begin(pipe, _message(i))
        dead.queue_begin(pipe, telegram)
        await pipe.execute()
    await dead.stop()  # its heartbeat is gone: as after a crash

    live = _journal(redis, key_prefix)
    await live.start()
    rivals = [_journal(redis, key_prefix) for _ in range(3)]
    claims = await asyncio.gather(*(j.claim_orphans({"slack"}) for j in (live, *rivals)))
    taken = sorted(m.message_id for claim in claims for m in claim)
    assert taken == [f"m{i}" for i in range(5)]  # each exactly once across the claimants
    keys = KeyBuilder(key_prefix)
    assert await redis.hkeys(dead.key) == [b"telegram:9:x"]  # telegram's stays for telegram
    assert dead.owner.encode() in await redis.smembers(keys.journal_owners())
    assert [m.message_id for m in await live.claim_orphans({"telegram"})] == ["x"]
    assert not await redis.exists(dead.key)
    assert dead.owner.encode() not in await redis.smembers(keys.journal_owners())
    await live.stop()


async def test_entries_of_a_live_owner_are_left_alone(redis: Redis, key_prefix: str):
    owner = _journal(redis, key_prefix)
    await owner.start()
    async with redis.pipeline(transaction=False) as pipe:
        owner.queue_begin(pipe, _message())
        await pipe.execute()
    assert await _journal(redis, key_prefix).claim_orphans({"slack"}) == []
    await owner.stop()


async def test_entries_left_in_the_journal_of_release_0_1_are_still_answered(
    redis: Redis, key_prefix: str
):
    """0.1 kept one journal hash, `{prefix}:journal`; an upgrade must not lose its entries."""
    entry = {"owner": "gone", "since": 0, "message": message_to_json(_message(7))}
    await redis.hset(f"{key_prefix}:journal", "slack:C1:m7", json.dumps(entry))
    claims = await asyncio.gather(
        *(_journal(redis, key_prefix).claim_orphans({"slack"}) for _ in range(3))
    )
    assert [m.message_id for claim in claims for m in claim] == ["m7"]
    assert not await redis.exists(f"{key_prefix}:journal")


async def test_an_owner_pruned_while_silent_is_registered_again_by_its_heartbeat(
    redis: Redis, key_prefix: str
):
    """Redis was away longer than the heartbeat's TTL: a replica starting then prunes the
    owner; its next heartbeat must register it again, or its entries are lost at a crash."""
    keys = KeyBuilder(key_prefix)
    owner = _journal(redis, key_prefix, heartbeat_ttl=0.3)
    await owner.start()
    await redis.delete(keys.owner(owner.owner))  # silent for a while
    assert await _journal(redis, key_prefix).claim_orphans({"slack"}) == []
    assert owner.owner.encode() not in await redis.smembers(keys.journal_owners())  # pruned
    await wait_for(lambda: redis.sismember(keys.journal_owners(), owner.owner), timeout=3)
    await owner.stop()


async def test_an_entry_left_by_a_failed_write_is_still_found_after_a_later_turn(
    redis: Redis, key_prefix: str
):
    """Turn 1's write failed (its entry stays); turn 2 of the same conversation is saved.
    Recovery must still answer turn 1's message."""
    dead = _journal(redis, key_prefix)
    await dead.start()
    first, second = _message(1), _message(2)
    async with redis.pipeline(transaction=False) as pipe:
        dead.queue_begin(pipe, first)
        dead.queue_begin(pipe, second)
        dead.queue_end(pipe, second)
        await pipe.execute()
    assert await redis.hlen(dead.key) == 1
    await dead.stop()  # then it crashed
    claims = await _journal(redis, key_prefix).claim_orphans({"slack"})
    assert [m.message_id for m in claims] == ["m1"]


async def test_a_clean_stop_leaves_the_owners_set_unless_entries_wait(
    redis: Redis, key_prefix: str
):
    keys = KeyBuilder(key_prefix)
    idle, busy = _journal(redis, key_prefix), _journal(redis, key_prefix)
    await idle.start()
    await busy.start()
    async with redis.pipeline(transaction=False) as pipe:
        busy.queue_begin(pipe, _message())  # interrupted at shutdown: another answers it
        await pipe.execute()
    await idle.stop()
    await busy.stop()
    assert await redis.smembers(keys.journal_owners()) == {busy.owner.encode()}


class _CancelTurnedIntoAnError:
    """A Redis client whose pipelines, after the first, hang until cancelled and then raise
    a connection error, as a client can when a cancel lands inside a command."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.pipelines = 0
        self.hanging = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pipeline(self, **options: Any) -> Any:
        self.pipelines += 1
        real = self._redis.pipeline(**options)
        if self.pipelines == 1:
            return real
        client = self

        class Hanging:
            async def __aenter__(self) -> Any:
                await real.__aenter__()
                return self

            async def __aexit__(self, *exc: object) -> None:
                await real.__aexit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def execute(self) -> list[Any]:
                client.hanging.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    raise RedisConnectionError("connection closed while reading") from None
                return []

        return Hanging()


async def test_a_stop_ends_even_when_the_heartbeats_cancel_is_swallowed(
    redis: Redis, key_prefix: str
):
    """SIGTERM once left a bot running: its journal's stop awaited a heartbeat whose cancel
    had been turned into a connection error inside a Redis call, and beat on."""
    client = _CancelTurnedIntoAnError(redis)
    journal = RedisJournal(client, KeyBuilder(key_prefix), heartbeat_ttl=0.3)
    await journal.start()
    await asyncio.wait_for(client.hanging.wait(), 5)  # a beat is inside its Redis call
    await asyncio.wait_for(journal.stop(), 2)
