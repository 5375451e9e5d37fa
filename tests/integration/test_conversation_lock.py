"""The conversation lock: held across processes while a long turn runs, released promptly."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from bots.taskdump import dump_tasks
from core.context import RedisStore, StoreLimits
from core.keys import KeyBuilder
from core.model import ContextKey, Turn
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
    assert "lock-extend" not in dump_tasks()  # no extension outlives its turn


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


async def test_a_lazy_lock_rides_in_the_read_and_leaves_with_the_save(
    redis: Redis, key_prefix: str
):
    store = _store(redis, key_prefix, 5)
    name = store.keys.lock(KEY)
    async with store.lock(KEY, lazy=True) as held:
        assert not await redis.exists(name)  # not taken yet: no round trip of its own
        await store.load_turn(KEY, lock=held)
        assert await redis.get(name) == held.token.encode()
        await store.save(KEY, Turn("user", "hi"), lock=held)
        assert not await redis.exists(name)  # released in the save's MULTI
    assert not await redis.exists(name)


async def test_a_contended_lazy_lock_waits_and_reads_the_conversation_again(
    redis: Redis, key_prefix: str
):
    """Another process is in the conversation: the turn waits for it, then sees its turn;
    the extras queued with the first read (a rate-limit take) ran exactly once."""
    first, second = _store(redis, key_prefix, 5), _store(redis, key_prefix, 5)
    counter = f"{key_prefix}:takes"
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with first.lock(KEY):
            inside.set()
            await release.wait()
            await first.save(KEY, Turn("user", "from the first process"))

    task = asyncio.create_task(holder())
    await inside.wait()

    async def late_turn() -> tuple[list[str], list[object]]:
        async with second.lock(KEY, lazy=True) as held:
            conversation, extras = await second.load_turn(
                KEY, extra=[lambda pipe: pipe.incr(counter)], lock=held
            )
            assert held.state == "held"
            await second.save(KEY, Turn("user", "from the second"), lock=held)
            return [turn.content for turn in conversation.history], extras

    waiting = asyncio.create_task(late_turn())
    await wait_for(lambda: "acquire" in dump_tasks())  # it waits for the lock
    release.set()
    history, extras = await waiting
    await task
    assert history == ["from the first process"]  # read again after the wait
    assert extras == [1] and await redis.get(counter) == b"1"  # the take counted once
    assert not await redis.exists(second.keys.lock(KEY))


async def test_a_lazy_lock_never_used_for_a_read_is_taken_by_the_save(
    redis: Redis, key_prefix: str
):
    store, other = _store(redis, key_prefix, 5), _store(redis, key_prefix, 5)
    order: list[str] = []

    async def holder() -> None:
        async with other.lock(KEY):
            order.append("other in")
            await asyncio.sleep(0.3)
            order.append("other out")

    task = asyncio.create_task(holder())
    await wait_for(lambda: bool(order))
    async with store.lock(KEY, lazy=True) as held:
        await store.save(KEY, Turn("user", "x"), lock=held)
        order.append("saved")
    await task
    assert order == ["other in", "other out", "saved"]
    assert not await redis.exists(store.keys.lock(KEY))
