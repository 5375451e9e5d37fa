"""The memory store (`stores/memory.py`): the port's semantics that a second store must match.
Time moves on a fake clock; two stores on one backend are two processes on one Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import stores.memory
from core.model import ContextKey, Message, ToolCall, Turn, User
from core.protocols import Usage
from core.storage import (
    DAY_TTL,
    CacheEntry,
    Deliveries,
    Place,
    RateTake,
    Totals,
    TurnReads,
    TurnWrites,
    UsageRecord,
    UserPeriod,
)
from stores.memory import MemoryBackend, MemoryStore
from stores.redis.health import StoreLimits

KEY = ContextKey("slack", "C1", "U1", "T1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def message(message_id: str, platform: str = "slack") -> Message:
    key = ContextKey(platform, "C1", "U1")
    return Message(platform, key, User("U1"), "hi", message_id, delivery_id="d" + message_id)


def exchange(n: int) -> tuple[Turn, Turn]:
    return Turn("user", f"q{n}"), Turn("assistant", f"a{n}")


def record(prompt: int, completion: int, token: str = "u1") -> UsageRecord:
    return UsageRecord("slack", "U1", "d2025-01-31", "m2025-01", Usage(prompt, completion), token)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> MemoryBackend:
    return MemoryBackend(clock)


def test_the_module_needs_no_redis_client_and_meets_the_ports() -> None:
    source = Path(stores.memory.__file__).read_text()
    assert "import redis" not in source and "from redis" not in source
    assert isinstance(MemoryStore(), Deliveries)


async def test_history_keeps_the_newest_max_turns_as_stored_turns(backend: MemoryBackend) -> None:
    store = MemoryStore(backend, StoreLimits(max_turns=4))
    for n in range(3):
        await store.write_turn(TurnWrites(KEY, exchange(n)))
    tool = Turn("assistant", "a3", tool_calls=(ToolCall("c", "f"),))
    await store.write_turn(TurnWrites(KEY, (tool,)))
    history = (await store.load(KEY)).history
    assert [t.content for t in history] == ["a1", "q2", "a2", "a3"]
    assert history[-1] == Turn("assistant", "a3")  # tool calls are not kept, as on Redis


async def test_idle_ttl_is_refreshed_by_writes_and_an_expired_conversation_is_empty(
    backend: MemoryBackend, clock: Clock
) -> None:
    store = MemoryStore(backend, StoreLimits(ttl_seconds=100))
    await store.write_turn(TurnWrites(KEY, exchange(0)))
    await store.set_setting(KEY, "persona", "pirate")
    clock.now += 90
    await store.write_turn(TurnWrites(KEY, exchange(1)))
    clock.now += 90  # 180 s after the first write, 90 after the last
    conversation = await store.load(KEY)
    assert len(conversation.history) == 4 and conversation.persona == "pirate"
    clock.now += 11
    conversation = await store.load(KEY)
    assert conversation.history == [] and conversation.persona == ""


async def test_a_resent_write_changes_nothing(backend: MemoryBackend) -> None:
    store = MemoryStore(backend)
    writes = TurnWrites(KEY, exchange(0), usage=record(10, 5))
    assert await store.write_turn(writes)
    assert await store.write_turn(writes)
    # another write carrying the same usage record (its own resend) adds no usage either
    await store.write_turn(TurnWrites(KEY, exchange(1), usage=record(10, 5)))
    assert len((await store.load(KEY)).history) == 4
    day, month = UserPeriod("slack", "U1", "d2025-01-31"), UserPeriod("slack", "U1", "m2025-01")
    assert await store.usage([day, month]) == [Totals(10, 5), Totals(10, 5)]
    assert backend.conversation_usage[KEY.id].prompt == 10
    state = await store.read_turn(TurnReads(KEY, history=False, budget=day))
    assert state.used_today == 15
    other_day = UserPeriod("slack", "U1", "d2025-02-01")
    assert (await store.read_turn(TurnReads(KEY, budget=other_day))).used_today == 0


async def test_user_usage_expires_per_period(backend: MemoryBackend, clock: Clock) -> None:
    store = MemoryStore(backend)
    await store.write_turn(TurnWrites(KEY, usage=record(1, 1)))
    clock.now += DAY_TTL + 1
    day, month = UserPeriod("slack", "U1", "d2025-01-31"), UserPeriod("slack", "U1", "m2025-01")
    assert await store.usage([day, month]) == [Totals(), Totals(1, 1)]


async def test_token_bucket_arithmetic_and_wait(backend: MemoryBackend, clock: Clock) -> None:
    store = MemoryStore(backend)

    async def take(token: str) -> tuple[bool, int]:
        rate = RateTake("slack", "U1", capacity=2, per_minute=6, token=token)  # 0.0001 a ms
        result = (await store.read_turn(TurnReads(KEY, history=False, rate=rate))).rate
        assert result is not None
        return result.allowed, result.wait_ms

    assert await take("a") == (True, 0)
    assert await take("b") == (True, 0)
    assert await take("a") == (True, 0)  # resent: allowed, nothing taken twice
    assert await take("c") == (False, 10_000)  # 1 token at 0.0001 a ms
    clock.now += 4.0
    assert await take("d") == (False, 6_000)  # 0.4 refilled: ceil(0.6 / 0.0001)
    clock.now += 6.0
    assert await take("e") == (True, 0)
    clock.now += 100.0  # refills to capacity, no further
    assert [await take(t) for t in "fgh"] == [(True, 0), (True, 0), (False, 10_000)]


async def test_one_holder_across_two_stores_and_a_lazy_waiter_reads_what_it_wrote(
    backend: MemoryBackend,
) -> None:
    first, second = MemoryStore(backend), MemoryStore(backend)
    async with first.lock(KEY) as held:

        async def turn() -> int:
            async with second.lock(KEY, lazy=True) as mine:
                state = await second.read_turn(TurnReads(KEY), lock=mine)
                await second.write_turn(TurnWrites(KEY, exchange(9)), lock=mine)
                return len(state.conversation.history)

        waiting = asyncio.create_task(turn())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await first.write_turn(TurnWrites(KEY, exchange(0)), lock=held)  # releases it
        assert await asyncio.wait_for(waiting, 2) == 2
    assert backend.locks == {}


async def test_turns_of_one_store_queue_in_arrival_order(backend: MemoryBackend) -> None:
    store, order = MemoryStore(backend), []

    async def turn(n: int) -> None:
        async with store.lock(KEY):
            await asyncio.sleep(0.01 * (3 - n))
            order.append(n)

    await asyncio.gather(*(turn(n) for n in range(3)))
    assert order == [0, 1, 2]


async def test_a_dead_holders_lock_is_taken_after_its_ttl(
    backend: MemoryBackend, clock: Clock
) -> None:
    limits = StoreLimits(lock_ttl=30, lock_wait=120)
    dead, alive = MemoryStore(backend, limits), MemoryStore(backend, limits)
    abandoned, waiting = dead.lock(KEY), alive.lock(KEY)  # referenced: not closed by the GC
    await abandoned.__aenter__()  # never left: its process dies
    dead.crash()
    taking = asyncio.create_task(waiting.__aenter__())
    await asyncio.sleep(0.05)
    assert not taking.done()
    clock.now += 31
    held = await asyncio.wait_for(taking, 2)
    assert held.state == "held" and backend.locks[KEY.id].value == held.token
    await waiting.__aexit__(None, None, None)
    assert backend.locks == {}


async def test_a_live_holder_keeps_its_lock_past_its_ttl() -> None:
    backend, limits = MemoryBackend(), StoreLimits(lock_ttl=0.3, lock_wait=0.5)  # real time
    first, second = MemoryStore(backend, limits), MemoryStore(backend, limits)
    async with first.lock(KEY) as held:
        async with second.lock(KEY) as other:  # waits out lock_wait: extended meanwhile
            assert other.state == "unlocked"
        assert backend.locks[KEY.id].value == held.token


async def test_a_waiter_goes_on_unlocked_after_lock_wait(
    backend: MemoryBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    backend.plant_lock(KEY, ttl=1000)
    store = MemoryStore(backend, StoreLimits(lock_wait=5))
    with caplog.at_level(logging.WARNING, "stores.memory"):
        waiting = store.lock(KEY)
        taking = asyncio.create_task(waiting.__aenter__())
        await asyncio.sleep(0.05)
        assert not taking.done()
        clock.now += 6
        held = await asyncio.wait_for(taking, 2)
    assert held.state == "unlocked" and "not free" in caplog.text
    await waiting.__aexit__(None, None, None)
    assert backend.locks[KEY.id].value == "dead"  # not ours to release


async def test_orphans_go_once_to_one_of_three_survivors(backend: MemoryBackend) -> None:
    dead, live = MemoryStore(backend), MemoryStore(backend)
    await dead.journal.start()
    await live.journal.start()
    messages = [message(str(n)) for n in range(6)] + [message("t", "telegram")]
    for m in messages:
        await dead.read_turn(TurnReads(m.key, history=False, journal=m))
    await dead.write_turn(TurnWrites(messages[0].key, answered=messages[0]))
    await live.read_turn(TurnReads(KEY, history=False, journal=message("live")))
    dead.crash()

    survivors = [MemoryStore(backend) for _ in range(3)]
    for s in survivors:
        await s.journal.start()
    claimed = await asyncio.gather(*(s.journal.claim_orphans({"slack"}) for s in survivors))
    ids = sorted(m.message_id for got in claimed for m in got)
    assert ids == ["1", "2", "3", "4", "5"]  # once each; not the answered, live or telegram ones
    assert all(m.delivery_id == "" for got in claimed for m in got)  # not a redelivery
    assert await survivors[0].journal.claim_orphans({"slack", "telegram"}) != []
    assert await survivors[1].journal.claim_orphans({"slack", "telegram"}) == []


async def test_claims_find_the_place_just_ahead_and_report_its_state(
    backend: MemoryBackend,
) -> None:
    mine, theirs = MemoryStore(backend), MemoryStore(backend)
    await theirs.journal.start()
    owner = theirs.journal.owner

    def place(order: str) -> str:
        return f"{order}:d{order}:{owner}"

    assert await theirs.claim(KEY, "slack", "d2", place("002")) == (True, "")
    assert await theirs.claim(KEY, "slack", "d4", place("004")) == (True, place("002"))
    assert await theirs.claim(KEY, "slack", "d3", place("003")) == (True, place("002"))
    assert await mine.claim(KEY, "slack", "d3", place("003")) == (False, "")  # a redelivery
    assert await mine.first_seen("slack", "d3")  # `first_seen` keeps its own ids, as on Redis
    assert await mine.pending(KEY, place("003")) == "pending"
    await theirs.write_turn(TurnWrites(KEY, leave=Place(KEY, place("003"))))
    assert await mine.pending(KEY, place("003")) == "answered"
    assert await mine.claim(KEY, "slack", "d5", place("005")) == (True, place("004"))
    theirs.crash()
    assert await mine.pending(KEY, place("004")) == "orphaned"
    await mine.leave(KEY, place("004"))
    assert await mine.pending(KEY, place("004")) == "answered"


async def test_seen_ids_and_pending_places_expire(backend: MemoryBackend, clock: Clock) -> None:
    store = MemoryStore(backend, StoreLimits(dedupe_ttl=60, lock_wait=10))
    assert await store.first_seen("slack", "d1")
    assert not await store.first_seen("slack", "d1")
    assert await store.claim(KEY, "slack", "d1", "001:d1:x") == (True, "")
    clock.now += 11  # the pending set lives `lock_wait` past its last claim
    assert await store.pending(KEY, "001:d1:x") == "answered"
    clock.now += 50
    assert await store.first_seen("slack", "d1")


async def test_write_ends_the_journal_entry_sets_the_cache_and_forget_drops_one(
    backend: MemoryBackend, clock: Clock
) -> None:
    store = MemoryStore(backend)
    m1, m2 = message("1"), message("2")
    await store.read_turn(TurnReads(KEY, journal=m1))
    await store.read_turn(TurnReads(KEY, journal=m2))
    await store.write_turn(TurnWrites(KEY, answered=m1, cache=CacheEntry("k", "42", ttl=10)))
    assert set(backend.journals[KEY.id]) == {"slack:C1:2"}
    await store.forget(KEY, m2)
    assert KEY.id not in backend.journals
    assert (await store.read_turn(TurnReads(KEY, cache="k"))).cached == "42"
    clock.now += 11
    assert await store.cached("k") is None


async def test_summary_applies_only_over_the_same_head(backend: MemoryBackend) -> None:
    store = MemoryStore(backend)
    await store.write_turn(TurnWrites(KEY, (*exchange(0), *exchange(1))))
    usage = Usage(3, 2)
    assert not await store.apply_summary(KEY, "s", exchange(1), usage)
    assert await store.apply_summary(KEY, "s", exchange(0), usage)
    conversation = await store.load(KEY)
    assert conversation.summary == "s" and conversation.history == list(exchange(1))
    assert backend.conversation_usage[KEY.id].prompt == 6  # recorded both times


async def test_settings_reset_and_channel_defaults(backend: MemoryBackend) -> None:
    store = MemoryStore(backend)
    with pytest.raises(ValueError):
        await store.set_setting(KEY, "colour", "blue")
    with pytest.raises(ValueError):
        await store.set_channel_setting(KEY, "summary", "x")
    await store.set_setting(KEY, "model", "m1")
    await store.set_channel_setting(ContextKey("slack", "C1", "U2", "T1"), "persona", "pirate")
    await store.write_turn(TurnWrites(KEY, exchange(0)))
    await store.apply_summary(KEY, "s", exchange(0), Usage())
    await store.write_turn(TurnWrites(KEY, exchange(1)))
    await store.reset(KEY)
    conversation = await store.load(KEY)
    assert (conversation.history, conversation.summary, conversation.model) == ([], "", "m1")
    assert conversation.channel_persona == "pirate"
    await store.set_setting(KEY, "model", "")
    assert (await store.load(KEY)).model == ""
