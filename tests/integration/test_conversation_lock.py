"""The conversation lock: held across processes while a long turn runs, released promptly."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from bots.redis_conn import make_client
from bots.taskdump import dump_tasks
from core.model import ContextKey, Turn
from core.storage import RateResult, RateTake, TurnReads, TurnWrites
from stores.redis.health import StoreLimits
from stores.redis.keys import KeyBuilder
from stores.redis.store import RedisStore
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
        return "stores/redis/locking.py" in part and "acquire" in part  # seen through the generator

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
        await store.read_turn(TurnReads(KEY), lock=held)
        assert await redis.get(name) == held.token.encode()
        await store.write_turn(TurnWrites(KEY, (Turn("user", "hi"),)), lock=held)
        assert not await redis.exists(name)  # released in the save's MULTI
    assert not await redis.exists(name)


async def test_a_contended_lazy_lock_waits_and_reads_the_conversation_again(
    redis: Redis, key_prefix: str
):
    """Another process is in the conversation: the turn waits for it, then sees its turn;
    the extras queued with the first read (a rate-limit take) ran exactly once."""
    first, second = _store(redis, key_prefix, 5), _store(redis, key_prefix, 5)
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with first.lock(KEY):
            inside.set()
            await release.wait()
            await first.write_turn(TurnWrites(KEY, (Turn("user", "from the first process"),)))

    task = asyncio.create_task(holder())
    await inside.wait()

    take = RateTake("slack", "U1", capacity=5, per_minute=0.001)

    async def late_turn() -> tuple[list[str], RateResult | None]:
        async with second.lock(KEY, lazy=True) as held:
            state = await second.read_turn(TurnReads(KEY, rate=take), lock=held)
            assert held.state == "held"
            await second.write_turn(TurnWrites(KEY, (Turn("user", "from the second"),)), lock=held)
            return [turn.content for turn in state.conversation.history], state.rate

    waiting = asyncio.create_task(late_turn())
    await wait_for(lambda: "acquire" in dump_tasks())  # it waits for the lock
    release.set()
    history, rate = await waiting
    await task
    assert history == ["from the first process"]  # read again after the wait
    assert rate == RateResult(True, 0)
    tokens = float(await redis.hget(second.keys.bucket("slack", "U1"), "tokens"))
    assert 3.99 < tokens < 4.01  # the take counted once
    assert not await redis.exists(second.keys.lock(KEY))


async def test_a_lazy_lock_never_used_for_a_read_is_taken_by_the_save(
    redis: Redis, key_prefix: str
):
    store, other = _store(redis, key_prefix, 5), _store(redis, key_prefix, 5)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with other.lock(KEY):
            order.append("other in")
            await release.wait()
            order.append("other out")

    async def saving() -> None:
        async with store.lock(KEY, lazy=True) as held:
            await store.write_turn(TurnWrites(KEY, (Turn("user", "x"),)), lock=held)
            order.append("saved")

    task = asyncio.create_task(holder())
    await wait_for(lambda: bool(order))
    saver = asyncio.create_task(saving())
    await wait_for(lambda: "acquire" in dump_tasks())  # the save waits for the lock
    release.set()
    await asyncio.gather(task, saver)
    assert order == ["other in", "other out", "saved"]
    assert not await redis.exists(store.keys.lock(KEY))


async def test_a_take_whose_reply_was_lost_does_not_wait_for_itself(redis: Redis, key_prefix: str):
    """A retried pipeline finds the lock already holding this turn's token: it is taken."""
    trips: list[int] = []
    store = RedisStore(redis, KeyBuilder(key_prefix), StoreLimits(lock_ttl=5, lock_wait=5),
                       on_round_trip=lambda: trips.append(1))  # fmt: skip
    async with store.lock(KEY, lazy=True) as held:
        await redis.set(store.keys.lock(KEY), held.token, px=5000)  # the first try's take
        await store.read_turn(TurnReads(KEY), lock=held)
        assert held.state == "held" and len(trips) == 1  # no wait of its own
        assert 4000 < await redis.pttl(store.keys.lock(KEY)) <= 5000  # renewed
    assert not await redis.exists(store.keys.lock(KEY))


async def test_a_turn_cancelled_while_its_take_is_out_leaves_no_lock(
    standalone_redis_url: str, key_prefix: str
):
    """Redis took the lock but the reply never reached the turn (cancelled at shutdown):
    the release still runs, so the next turn in this conversation need not wait for the TTL."""
    base = UnixDomainSocketConnection if standalone_redis_url.startswith("unix") else Connection
    gate = asyncio.Event()
    holding = True

    class HeldReplies(base):  # type: ignore[misc, valid-type]
        async def read_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if holding:
                await gate.wait()
            return await super().read_response(*args, **kwargs)

    client = make_client(standalone_redis_url, connection_class=HeldReplies)
    store = _store(client, key_prefix, 30)
    name = store.keys.lock(KEY)
    try:
        holding = False
        await client.ping()
        holding = True

        async def turn() -> None:
            async with store.lock(KEY, lazy=True) as held:
                await store.read_turn(TurnReads(KEY), lock=held)

        task = asyncio.create_task(turn())
        watcher = Redis.from_url(standalone_redis_url)
        try:
            await wait_for(lambda: watcher.exists(name))  # Redis ran the take
            task.cancel()
            gate.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert not await watcher.exists(name)
        finally:
            await watcher.aclose()
    finally:
        gate.set()
        await client.aclose()


async def test_a_lazy_turn_longer_than_the_ttl_keeps_its_lock(redis: Redis, key_prefix: str):
    store = _store(redis, key_prefix, lock_ttl=0.3)  # extended every 0.1 s
    name = store.keys.lock(KEY)
    async with store.lock(KEY, lazy=True) as held:
        await store.read_turn(TurnReads(KEY), lock=held)
        await asyncio.sleep(1.0)  # the turn itself: several times the lock's TTL
        assert await redis.get(name) == held.token.encode()
        await store.write_turn(TurnWrites(KEY, (Turn("user", "done"),)), lock=held)
    assert not await redis.exists(name)
    assert "lock-extend" not in dump_tasks()
