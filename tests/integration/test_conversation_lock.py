"""The conversation lock: held across processes while a long turn runs, released promptly."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from bots.taskdump import dump_tasks
from core.context import RedisStore, StoreLimits
from core.keys import KeyBuilder
from core.model import ContextKey
from tests.helpers import wait_for

KEY = ContextKey("telegram", "42", "42")


def _store(redis: Redis, prefix: str, lock_ttl: float) -> RedisStore:
    return RedisStore(redis, KeyBuilder(prefix), StoreLimits(lock_ttl=lock_ttl, lock_wait=5))


async def test_a_long_turn_keeps_its_lock_and_leaves_it_at_once(redis: Redis, key_prefix: str):
    store = _store(redis, key_prefix, lock_ttl=0.3)  # refreshed every 0.1 s
    name = store.keys.lock(KEY)
    async with store.lock(KEY):
        await asyncio.sleep(1.0)  # the turn itself: several times the lock's TTL
        assert await redis.exists(name)  # still held: the refresher extended it
    assert not await redis.exists(name)
    assert "_refresh" not in dump_tasks()  # no refresher outlives its turn


async def test_a_second_process_waits_for_the_turn(redis: Redis, key_prefix: str):
    first, second = _store(redis, key_prefix, 0.3), _store(redis, key_prefix, 0.3)
    order: list[str] = []

    async def turn(store: RedisStore, label: str, hold: float) -> None:
        async with store.lock(KEY):
            order.append(f"{label} in")
            await asyncio.sleep(hold)
            order.append(f"{label} out")

    holder = asyncio.create_task(turn(first, "first", 0.6))
    await wait_for(lambda: bool(order))
    await turn(second, "second", 0)
    await holder
    assert order == ["first in", "first out", "second in", "second out"]


async def test_the_task_dump_follows_awaits_into_a_lock(redis: Redis, key_prefix: str):
    store = _store(redis, key_prefix, 5)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with store.lock(KEY):
            inside.set()
            await release.wait()

    async def waiter() -> None:
        async with store.lock(KEY):
            pass

    tasks = [asyncio.create_task(holder(), name="holder")]
    await inside.wait()
    tasks.append(asyncio.create_task(waiter(), name="waiter"))

    def waiter_shown_in_acquire() -> bool:
        part = dump_tasks().split("task waiter:")[1]
        return "core/context.py" in part and "acquire" in part  # seen through the generator

    await wait_for(waiter_shown_in_acquire)
    release.set()
    await asyncio.gather(*tasks)
