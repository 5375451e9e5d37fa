"""The answer journal: entries of dead processes are claimed exactly once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

from redis.asyncio import Redis

from core.model import Attachment, Command, ContextKey, Message, User
from stores.redis.journal import Journal, message_from_json, message_to_json


def _message(i: int = 1) -> Message:
    return Message(
        platform="slack",
        key=ContextKey("slack", channel="C1", user="U1", workspace="T1", thread="1.2"),
        user=User("U1", "Ann", is_admin=True),
        text="héllo",
        message_id=f"m{i}",
        command=Command("ask", "x"),
        attachments=(Attachment("a.png", "image/png", "http://x", 3),),
    )


def test_message_json_round_trip():
    assert message_from_json(message_to_json(_message())) == _message()
    assert json.loads(message_to_json(_message())) == json.loads(json.dumps(asdict(_message())))
    assert message_from_json("{not json") is None


async def test_orphans_of_a_dead_owner_are_claimed_once(redis: Redis, key_prefix: str):
    dead = Journal(redis, key_prefix, heartbeat_ttl=0.2)
    await dead.start()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(5):
            dead.begin(_message(i))(pipe)
        dead.begin(Message("telegram", ContextKey("telegram", "9"), User("1"), "t", "x"))(pipe)
        await pipe.execute()
    await dead.stop()  # its heartbeat is gone: as after a crash

    live = Journal(redis, key_prefix)
    await live.start()
    rivals = [Journal(redis, key_prefix) for _ in range(3)]
    claims = await asyncio.gather(*(j.claim_orphans({"slack"}) for j in (live, *rivals)))
    taken = sorted(m.message_id for claim in claims for m in claim)
    assert taken == [f"m{i}" for i in range(5)]  # each exactly once across the claimants
    assert await redis.hlen(f"{key_prefix}:journal") == 1  # telegram's stays for a telegram bot
    await live.stop()


async def test_entries_of_a_live_owner_are_left_alone(redis: Redis, key_prefix: str):
    owner = Journal(redis, key_prefix)
    await owner.start()
    async with redis.pipeline(transaction=False) as pipe:
        owner.begin(_message())(pipe)
        await pipe.execute()
    assert await Journal(redis, key_prefix).claim_orphans({"slack"}) == []
    await owner.stop()
