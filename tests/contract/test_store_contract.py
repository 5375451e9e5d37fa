"""The store port's contract (core/storage.py): one set of behaviours, every store kind.

Each test runs once per kind of `stores` (tests/contract/conftest.py), through the port only;
a second store on the same backend is another process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.model import ContextKey, Image, Turn
from core.protocols import Usage
from core.storage import (
    CacheEntry,
    Deliveries,
    Erased,
    ImageBlob,
    Person,
    Place,
    RateTake,
    Totals,
    TurnReads,
    TurnWrites,
    UsageRecord,
    UserPeriod,
)
from tests.contract.conftest import Stores
from tests.helpers import user_message, wait_for

PLATFORM = "telegram"
KEY = ContextKey(PLATFORM, "42", "u1")
DAY, MONTH = "d2025-01-31", "m2025-01"


def pair(i: int) -> tuple[Turn, Turn]:
    return Turn("user", f"q{i}"), Turn("assistant", f"a{i}")


def texts(turns: list[Turn]) -> list[str]:
    return [turn.content for turn in turns]


def record(prompt: int = 60, completion: int = 40) -> UsageRecord:
    return UsageRecord(PLATFORM, "u1", DAY, MONTH, Usage(prompt, completion))


async def history(store: Any, key: ContextKey = KEY) -> list[str]:
    return texts((await store.load(key)).history)


# 1. history


async def test_history_keeps_the_last_max_turns_in_order(stores: Stores):
    store = await stores.new(max_turns=4)
    for i in range(3):
        assert await store.write_turn(TurnWrites(KEY, turns=pair(i)))
    assert await history(store) == ["q1", "a1", "q2", "a2"]
    state = await store.read_turn(TurnReads(KEY))
    assert texts(state.conversation.history) == ["q1", "a1", "q2", "a2"]
    assert await store.write_turn(TurnWrites(KEY, turns=(*pair(3), *pair(4), *pair(5))))
    assert await history(store) == ["q4", "a4", "q5", "a5"]


# 2. idle TTL


async def test_an_idle_conversation_is_forgotten_after_its_ttl(stores: Stores):
    store = await stores.new(ttl_seconds=1)
    await store.write_turn(TurnWrites(KEY, turns=pair(1)))
    await store.set_setting(KEY, "persona", "pirate")
    conversation = await store.load(KEY)
    assert (texts(conversation.history), conversation.persona) == (["q1", "a1"], "pirate")

    async def forgotten() -> bool:
        conversation = await store.load(KEY)
        return conversation.history == [] and conversation.persona == ""

    await stores.wait_out(1.05)
    await wait_for(forgotten, timeout=5, every=0.05)


# 3. ordered turns under concurrency


async def _turns(stores_by_task: list[Any]) -> tuple[list[int], list[int]]:
    """Task i takes the lazy lock of its store, reads, writes its pair. (entry order, how
    many turns each read saw)"""
    entered: list[int] = []
    seen: list[int] = []

    async def turn(store: Any, i: int) -> None:
        entered.append(i)
        async with store.lock(KEY, lazy=True) as held:
            state = await store.read_turn(TurnReads(KEY), lock=held)
            seen.append(len(state.conversation.history))
            await asyncio.sleep(0)  # let the others run between read and write
            assert await store.write_turn(TurnWrites(KEY, turns=pair(i)), lock=held)

    await asyncio.gather(*(turn(store, i) for i, store in enumerate(stores_by_task)))
    return entered, seen


def _pairs(turns: list[str]) -> list[int]:
    """The task numbers of the history's pairs; fails on a pair broken or interleaved."""
    assert len(turns) % 2 == 0, turns
    users, answers = turns[0::2], turns[1::2]
    assert [u[1:] for u in users] == [a[1:] for a in answers], turns
    assert all(u[0] == "q" and a[0] == "a" for u, a in zip(users, answers, strict=True)), turns
    return [int(u[1:]) for u in users]


async def test_fifty_concurrent_turns_keep_their_pairs_in_entry_order(stores: Stores):
    store = await stores.new(max_turns=200)
    entered, seen = await _turns([store] * 50)
    assert _pairs(await history(store)) == entered
    assert seen == list(range(0, 100, 2))  # each read saw every turn written before it


async def test_fifty_turns_from_two_processes_lose_none(stores: Stores):
    first, second = await stores.new(max_turns=200), await stores.new(max_turns=200)
    _entered, seen = await _turns([first, second] * 25)
    assert sorted(_pairs(await history(first))) == list(range(50))
    assert sorted(seen) == list(range(0, 100, 2))  # one turn at a time, across processes


# 4. lock expiry and takeover


async def test_a_lock_whose_holder_stopped_is_taken_after_its_ttl(stores: Stores):
    other = await stores.new(lock_ttl=0.5, lock_wait=5)
    async with stores.frozen_holder(KEY, lock_ttl=0.5, lock_wait=5):
        held_at = stores.now()
        took: list[float] = []

        async def take() -> None:
            async with other.lock(KEY):
                took.append(stores.now())

        taking = asyncio.create_task(take())
        await asyncio.sleep(0.2)
        assert not taking.done()  # still held
        await stores.wait_out(0.5)
        await asyncio.wait_for(taking, timeout=5)
        assert took[0] - held_at >= 0.4


# 5. dedupe, claims and pending places


async def test_a_delivery_is_first_seen_once(stores: Stores):
    first, second = await stores.new(), await stores.new()
    assert await first.first_seen(PLATFORM, "d1")
    assert not await second.first_seen(PLATFORM, "d1")
    assert not await first.first_seen(PLATFORM, "d1")
    assert await second.first_seen(PLATFORM, "d2")


async def test_claims_queue_in_order_and_pending_follows_the_owner(stores: Stores):
    alive, other = await stores.new(), await stores.new()
    assert isinstance(alive, Deliveries)
    await alive.journal.start()
    p1, p2 = f"0001:d1:{alive.journal.owner}", f"0002:d2:{alive.journal.owner}"
    dead = "0003:d3:0123456789abcdef"  # an owner without a heartbeat
    assert await alive.claim(KEY, PLATFORM, "d1", p1) == (True, "")
    assert await other.claim(KEY, PLATFORM, "d2", p2) == (True, p1)
    assert (await other.claim(KEY, PLATFORM, "d2", p2))[0] is False  # delivered again
    assert await other.claim(KEY, PLATFORM, "d3", dead) == (True, p2)
    assert await other.pending(KEY, p1) == "pending"
    assert await alive.pending(KEY, dead) == "orphaned"
    await alive.leave(KEY, p2)
    assert await other.pending(KEY, p2) == "answered"
    await other.leave(KEY, dead)
    assert await other.claim(KEY, PLATFORM, "d4", f"0004:d4:{alive.journal.owner}") == (True, p1)


async def test_retake_tells_how_far_a_stopped_worker_got_with_a_delivery(stores: Stores):
    """A worker taking over a stream entry asks: never claimed (new), claimed and not recorded
    (again: reset, so it is claimed anew), or recorded (done: the place left in the write)."""
    worker, heir = await stores.new(), await stores.new()
    assert isinstance(worker, Deliveries)
    assert await heir.retake(KEY, PLATFORM, "p1-1", "0001") == "new"
    place = "0001:p1-1:0123456789abcdef"  # claimed by a worker that then died
    assert await worker.claim(KEY, PLATFORM, "p1-1", place) == (True, "")
    assert await heir.retake(KEY, PLATFORM, "p1-1", "0001") == "again"
    # claimed by a worker that lives (it lost its partition, and may be answering): busy
    await worker.journal.start()
    alive = f"0005:p1-5:{worker.journal.owner}"
    assert await worker.claim(KEY, PLATFORM, "p1-5", alive) == (True, "")
    assert await heir.retake(KEY, PLATFORM, "p1-5", "0005") == "busy"
    assert await heir.pending(KEY, alive) == "pending"  # left as it was
    assert await heir.retake(KEY, PLATFORM, "p1-5", "0005", force=True) == "again"
    assert await heir.pending(KEY, place) == "answered"  # its place is gone, and the
    anew = "0001:p1-1:fedcba9876543210"
    assert (await heir.claim(KEY, PLATFORM, "p1-1", anew))[0]  # claim is first again
    assert await heir.write_turn(TurnWrites(KEY, turns=pair(1), leave=Place(KEY, anew)))
    assert await worker.retake(KEY, PLATFORM, "p1-1", "0001") == "done"
    # another delivery whose id starts the same is not mistaken for it
    assert await worker.claim(KEY, PLATFORM, "p1-10", "0002:p1-10:0123456789abcdef")
    assert await heir.retake(KEY, PLATFORM, "p1-1", "0001") == "done"


# 6. resend idempotency


async def test_a_write_sent_twice_lands_once(stores: Stores):
    store = await stores.new()
    writes = TurnWrites(KEY, turns=pair(1), usage=record())
    assert await store.write_turn(writes)
    assert await store.write_turn(writes)
    assert await history(store) == ["q1", "a1"]
    assert await store.usage([UserPeriod(PLATFORM, "u1", DAY)]) == [Totals(60, 40)]


async def test_a_rate_take_sent_twice_takes_one_token(stores: Stores):
    store = await stores.new()

    async def take(rate: RateTake) -> bool:
        state = await store.read_turn(TurnReads(KEY, history=False, rate=rate))
        assert state.rate is not None
        return state.rate.allowed

    def new_take() -> RateTake:
        return RateTake(PLATFORM, "u1", capacity=2, per_minute=0.01)  # no refill meanwhile

    resent = new_take()
    assert await take(resent)
    assert await take(resent)  # the same take: allowed, nothing taken
    assert await take(new_take())  # the second token
    assert not await take(new_take())


# 7. rate limit and budget arithmetic


async def test_the_token_bucket_refuses_the_third_and_says_how_long(stores: Stores):
    store = await stores.new()
    results: list[Any] = []
    for _ in range(3):
        rate = RateTake(PLATFORM, "u1", capacity=2, per_minute=60)  # a token a second
        results.append((await store.read_turn(TurnReads(KEY, history=False, rate=rate))).rate)
    assert [r.allowed for r in results] == [True, True, False]
    assert abs(results[2].wait_ms - 1000) <= 50, results[2]


async def test_usage_adds_up_per_day_and_month(stores: Stores):
    store = await stores.new()
    today = TurnReads(KEY, history=False, budget=UserPeriod(PLATFORM, "u1", DAY))
    assert (await store.read_turn(today)).used_today == 0
    assert await store.write_turn(TurnWrites(KEY, usage=record(60, 40)))
    assert (await store.read_turn(today)).used_today == 100
    assert await store.write_turn(TurnWrites(KEY, usage=record(5, 5)))
    periods = [UserPeriod(PLATFORM, "u1", p) for p in (DAY, MONTH, "d2025-02-01")]
    assert await store.usage(periods) == [Totals(65, 45), Totals(65, 45), Totals()]
    assert [t.total for t in await store.usage(periods)] == [110, 110, 0]


async def test_a_turns_images_are_kept_beside_it_for_their_ttl_and_erased_with_it(
    stores: Stores,
):
    store, other = await stores.new(), await stores.new()
    image = Image("img1", "image/png", b"\x89PNG pixels")
    asked = Turn("user", "look", user="alice", images=(image,))
    writes = TurnWrites(
        KEY, (asked, Turn("assistant", "a cat")), person=Person(PLATFORM, "alice"),
        images=(ImageBlob("img1", image.data, ttl=1),),
    )  # fmt: skip
    assert await store.write_turn(writes)
    stored = (await other.load(KEY)).history[0]
    assert stored.images == (Image("img1", "image/png"),)  # the id, not the bytes
    assert await other.images(KEY, ["img1", "gone"]) == {"img1": b"\x89PNG pixels"}
    assert await other.usage([UserPeriod(PLATFORM, "alice", DAY)]) == [Totals()]
    await stores.wait_out(1.1)
    await wait_for(lambda: _no_images(other))
    assert await history(other) == ["look", "a cat"]  # the turn outlives its image

    kept = ImageBlob("img2", b"GIF89a", ttl=600)
    again = Turn("user", "and this", user="alice", images=(Image("img2", "image/gif"),))
    await store.write_turn(TurnWrites(KEY, (again,), person=Person(PLATFORM, "alice"),
                                      images=(kept,)))  # fmt: skip
    assert await store.images(KEY, ["img2"]) == {"img2": b"GIF89a"}
    await store.erase(Person(PLATFORM, "alice"))
    assert await store.images(KEY, ["img2"]) == {}


async def _no_images(store: Any) -> bool:
    return await store.images(KEY, ["img1"]) == {}


async def test_pictures_drawn_add_up_beside_the_tokens(stores: Stores):
    store = await stores.new()
    drawn = UsageRecord(PLATFORM, "u1", DAY, MONTH, Usage(), images=1)
    assert await store.write_turn(TurnWrites(KEY, usage=drawn))
    assert await store.write_turn(TurnWrites(KEY, usage=record(5, 5)))
    periods = [UserPeriod(PLATFORM, "u1", p) for p in (DAY, MONTH)]
    assert await store.usage(periods) == [Totals(5, 5, 1), Totals(5, 5, 1)]


async def test_an_approval_is_taken_once_and_belongs_to_its_asker(stores: Stores):
    store, other = await stores.new(), await stores.new()
    await store.hold_approval("ap1", ALICE, '{"tool": "deploy"}', ttl=60)
    await store.hold_approval("ap2", BOB, '{"tool": "other"}', ttl=60)
    assert await other.approval("ap1") == '{"tool": "deploy"}'  # read, left in place
    taken = await asyncio.gather(store.take_approval("ap1"), other.take_approval("ap1"))
    assert sorted(taken, key=str) == [None, '{"tool": "deploy"}']  # two presses: one wins
    assert await store.approval("ap1") is None
    await store.hold_approval("ap3", ALICE, "pending", ttl=60)
    assert (await store.person(ALICE)).approvals == ["pending"]
    assert (await store.erase(ALICE)).approvals == 1
    assert await store.approval("ap3") is None
    assert await store.approval("ap2") == '{"tool": "other"}'  # nobody else's
    await store.hold_approval("short", BOB, "x", ttl=1)
    await stores.wait_out(1.1)
    await wait_for(lambda: _gone(store, "short"))


async def _gone(store: Any, approval_id: str) -> bool:
    return await store.approval(approval_id) is None


# 8. cache


async def test_a_cached_answer_reads_back(stores: Stores):
    store, other = await stores.new(), await stores.new()
    assert await store.write_turn(TurnWrites(KEY, cache=CacheEntry("digest", "42", ttl=60)))
    assert await other.cached("digest") == "42"
    assert (await other.read_turn(TurnReads(KEY, cache="digest"))).cached == "42"
    assert await other.cached("another") is None


# 9. answer journal


async def test_a_dead_owners_entry_goes_to_exactly_one_claimant(stores: Stores):
    owner = await stores.new()
    claimants = [await stores.new() for _ in range(3)]
    message = user_message("hello", platform=PLATFORM, channel="42", user="u1")
    await owner.journal.start()
    await owner.read_turn(TurnReads(message.key, journal=message))
    assert await claimants[0].journal.claim_orphans({PLATFORM}) == []  # its owner lives
    await owner.journal.stop()
    claims = await asyncio.gather(*(c.journal.claim_orphans({PLATFORM}) for c in claimants))
    assert sorted(claims, key=len) == [[], [], [message]]
    assert await claimants[0].journal.claim_orphans({PLATFORM}) == []


async def test_an_answered_entry_leaves_the_journal(stores: Stores):
    owner, claimant = await stores.new(), await stores.new()
    answered = user_message("answered", platform=PLATFORM, channel="42", message_id="m1")
    forgotten = user_message("refused", platform=PLATFORM, channel="42", message_id="m2")
    await owner.journal.start()
    await owner.read_turn(TurnReads(answered.key, journal=answered))
    await owner.write_turn(TurnWrites(answered.key, turns=pair(1), answered=answered))
    await owner.read_turn(TurnReads(forgotten.key, journal=forgotten))
    await owner.forget(forgotten.key, forgotten)
    await owner.journal.stop()
    assert await claimant.journal.claim_orphans({PLATFORM}) == []


async def test_orphans_are_claimed_only_on_the_platforms_asked(stores: Stores):
    owner, claimant = await stores.new(), await stores.new()
    message = user_message("hi", platform="slack", channel="C1", user="U1")
    await owner.journal.start()
    await owner.read_turn(TurnReads(message.key, journal=message))
    await owner.journal.stop()
    assert await claimant.journal.claim_orphans({PLATFORM}) == []
    assert await claimant.journal.claim_orphans({"slack"}) == [message]


# 10. settings, reset, summary


async def test_reset_keeps_persona_and_model_and_drops_history_and_summary(stores: Stores):
    store = await stores.new()
    await store.write_turn(TurnWrites(KEY, turns=(*pair(1), *pair(2))))
    await store.set_setting(KEY, "persona", "pirate")
    await store.set_setting(KEY, "model", "gpt-other")
    assert await store.apply_summary(KEY, "they met", pair(1), Usage(10, 5))
    await store.reset(KEY)
    conversation = await store.load(KEY)
    assert (conversation.history, conversation.summary) == ([], "")
    assert (conversation.persona, conversation.model) == ("pirate", "gpt-other")


async def test_settings_and_channel_defaults_read_back(stores: Stores):
    store, other = await stores.new(), await stores.new()
    neighbour = ContextKey(PLATFORM, "42", "u2")  # another conversation of the channel
    await store.set_setting(KEY, "persona", "pirate")
    await store.set_setting(KEY, "model", "gpt-other")
    await store.set_setting(KEY, "model", "")  # cleared
    await store.set_channel_setting(KEY, "persona", "poet")
    await store.set_channel_setting(KEY, "model", "gpt-big")
    mine = await other.load(KEY, channel=KEY)
    assert (mine.persona, mine.model, mine.channel_persona) == ("pirate", "", "poet")
    theirs = await other.load(neighbour, channel=neighbour)
    assert (theirs.persona, theirs.channel_persona, theirs.channel_model) == (
        "", "poet", "gpt-big"
    )  # fmt: skip
    await store.set_channel_setting(KEY, "model", "")
    assert (await other.load(neighbour, channel=neighbour)).channel_model == ""


async def test_a_summary_folds_only_the_turns_still_at_the_head(stores: Stores):
    store = await stores.new()
    await store.write_turn(TurnWrites(KEY, turns=(*pair(1), *pair(2), *pair(3))))
    assert await store.apply_summary(KEY, "first", pair(1), Usage(10, 5))
    conversation = await store.load(KEY)
    assert (texts(conversation.history), conversation.summary) == (
        ["q2", "a2", "q3", "a3"], "first"
    )  # fmt: skip
    assert not await store.apply_summary(KEY, "stale", pair(1), Usage(10, 5))  # not the head
    assert not await store.apply_summary(KEY, "stale", pair(3), Usage(10, 5))
    conversation = await store.load(KEY)
    assert (texts(conversation.history), conversation.summary) == (
        ["q2", "a2", "q3", "a3"], "first"
    )  # fmt: skip


# 11. a person's data: export and erasure

ALICE, BOB = Person(PLATFORM, "alice"), Person(PLATFORM, "bob")
SHARED = ContextKey(PLATFORM, "group-1")  # a channel's one conversation: no user part
OWN = ContextKey(PLATFORM, "dm-alice", "alice")  # alice's own (a per-user scope)


def said(who: Person, text: str) -> Turn:
    return Turn("user", text, who.user.title(), user=who.user)


async def speak(store: Any, key: ContextKey, who: Person, text: str, **writes: Any) -> None:
    turns = (said(who, text), Turn("assistant", f"re: {text}"))
    own = key == OWN  # the core says so: a private conversation or a per-user scope
    assert await store.write_turn(TurnWrites(key, turns, person=who, own=own, **writes))


async def test_a_persons_data_is_exported_and_erased_and_nobody_elses(stores: Stores):
    store = await stores.new()
    alice_usage = UsageRecord(PLATFORM, "alice", DAY, MONTH, Usage(7, 3))
    await speak(store, SHARED, ALICE, "alice in the group", usage=alice_usage)
    await speak(store, SHARED, BOB, "bob in the group")
    await speak(store, SHARED, ALICE, "alice again", cache=CacheEntry("c-alice", "re", 600))
    await speak(store, OWN, ALICE, "alice alone")
    await store.set_setting(OWN, "persona", "pirate")
    bob_usage = UsageRecord(PLATFORM, "bob", DAY, MONTH, Usage(1, 1))
    await speak(store, SHARED, BOB, "bob last", usage=bob_usage)

    data = await store.person(ALICE)
    assert {k: texts(v) for k, v in data.conversations.items()} == {
        SHARED.id: ["alice in the group", "re: alice in the group", "alice again",
                    "re: alice again"],
        OWN.id: ["alice alone", "re: alice alone"],
    }  # fmt: skip
    assert data.settings == {OWN.id: {"persona": "pirate"}}
    assert data.usage == {DAY: Totals(7, 3), MONTH: Totals(7, 3)}
    assert texts((await store.person(BOB)).conversations[SHARED.id]) == [
        "bob in the group", "re: bob in the group", "bob last", "re: bob last",
    ]  # fmt: skip

    erased = await store.erase(ALICE)
    assert (erased.conversations, erased.turns, erased.usage, erased.cached) == (1, 4, 2, 1)
    assert await history(store, SHARED) == [
        "bob in the group", "re: bob in the group", "bob last", "re: bob last",
    ]  # fmt: skip
    assert await history(store, OWN) == []
    assert (await store.load(OWN)).persona == ""
    assert await store.cached("c-alice") is None
    assert await store.usage([UserPeriod(PLATFORM, "alice", DAY)]) == [Totals()]
    assert await store.usage([UserPeriod(PLATFORM, "bob", DAY)]) == [Totals(1, 1)]
    empty = await store.person(ALICE)
    assert (empty.conversations, empty.settings, empty.usage) == ({}, {}, {})
    assert await store.erase(ALICE) == Erased()  # again: nothing left


async def test_a_user_whose_id_looks_like_an_empty_part_owns_no_shared_conversation(
    stores: Stores,
):
    """Ownership is what the write said, never read off the conversation's id (`-` is also
    how an empty id part is written)."""
    store = await stores.new()
    dash, carol = Person(PLATFORM, "-"), Person(PLATFORM, "carol")
    await speak(store, SHARED, carol, "carol's words")
    await speak(store, SHARED, dash, "dash's words")
    erased = await store.erase(dash)
    assert (erased.conversations, erased.turns) == (0, 2)
    assert await history(store, SHARED) == ["carol's words", "re: carol's words"]
