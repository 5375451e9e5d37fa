"""A Redis reply that comes too late: the client gives up, reconnects and sends the command
again, while the first one was already carried out. Nothing may be lost or done twice."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from redis.asyncio import Redis

from bots.redis_conn import make_client
from core.model import ContextKey, Message, Turn, User
from core.policies.limits import RateLimiter
from core.policies.usage import UsageBook
from core.protocols import Usage
from core.sections import LimitsSettings
from core.storage import RateResult, Totals, TurnReads, TurnWrites, UserPeriod
from stores.redis.health import StoreLimits
from stores.redis.journal import RedisJournal
from stores.redis.keys import KeyBuilder
from stores.redis.store import RedisStore
from tests.redis_server import RedisProcess

SOCKET_TIMEOUT = 0.2
BUSY = 0.3  # longer than the socket timeout, shorter than the retry's whole wait

# Keeps the server busy for ARGV[1] microseconds: commands sent meanwhile wait in their
# sockets, and run (their replies too late for a client that gave up) once it ends.
BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


async def _calls(server: RedisProcess, command: str) -> int:
    """How often the server has run `command` (INFO commandstats)."""
    client = Redis.from_url(server.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _make_busy(server: RedisProcess, seconds: float) -> socket.socket:
    """Start the busy script on a raw connection and return once the server is busy."""
    busy = socket.create_connection(("127.0.0.1", server.port))
    script = BUSY_SCRIPT.encode()
    args = [b"EVAL", script, b"0", str(int(seconds * 1_000_000)).encode()]
    busy.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # busy once a PING goes unanswered
        with socket.create_connection(("127.0.0.1", server.port)) as probe:
            probe.settimeout(0.02)
            probe.sendall(b"PING\r\n")
            try:
                probe.recv(16)
            except TimeoutError:
                return busy
    raise AssertionError("the server never got busy")


async def test_a_delivery_whose_first_reply_was_late_is_still_first_seen(
    redis_process: RedisProcess,
):
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    store = RedisStore(client, KeyBuilder("slow"), StoreLimits())
    try:
        await client.ping()  # the connection the first attempt uses is open
        sent = await _calls(redis_process, "eval")
        busy = _make_busy(redis_process, BUSY)
        # The SET waits out the busy script, the client times out and sends it again on a new
        # connection; the server then runs both. The delivery is new: it must be handled.
        assert await store.first_seen("slack", "Ev1")
        busy.close()
        assert await _calls(redis_process, "eval") >= sent + 3  # the busy script, sent, resent
        assert not await store.first_seen("slack", "Ev1")  # a real duplicate still is one
        checker = Redis.from_url(redis_process.url)
        assert await checker.exists(store.keys.seen("slack", "Ev1"))
        await checker.aclose()
    finally:
        await client.aclose()


async def test_a_save_whose_first_reply_was_late_is_recorded_once(redis_process: RedisProcess):
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    store = RedisStore(client, KeyBuilder("slow"), StoreLimits())
    key = ContextKey("slack", "C1", "U1")
    book = UsageBook("UTC")
    message = Message("slack", key, User("U1"), "hello", "m1")
    try:
        await store.write_turn(TurnWrites(key, (Turn("user", "before"), Turn("assistant", "ok"))))
        sent = await _calls(redis_process, "exec")
        busy = _make_busy(redis_process, BUSY)
        record = book.record(message, Usage(10, 5), book.now())
        turns = (Turn("user", "hello"), Turn("assistant", "hi there"))
        await store.write_turn(TurnWrites(key, turns, usage=record))
        busy.close()
        assert await _calls(redis_process, "exec") >= sent + 2  # sent, resent
        history = (await store.load(key)).history
        assert [turn.content for turn in history] == ["before", "ok", "hello", "hi there"]
        totals = await _totals(client, store, key)
        assert (totals.prompt, totals.completion) == (10, 5)  # counted once
        assert record is not None
        (today,) = await store.usage([UserPeriod("slack", "U1", record.day)])
        assert (today.prompt, today.completion) == (10, 5)  # the user's day too
    finally:
        await client.aclose()


async def test_a_rate_limit_take_whose_reply_was_late_takes_one_token(
    redis_process: RedisProcess,
):
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    store = RedisStore(client, KeyBuilder("slow"), StoreLimits())
    limiter = RateLimiter(LimitsSettings(messages_per_minute=1, burst=1))
    message = Message("slack", ContextKey("slack", "C1", "U1"), User("U1"), "hi", "m1")
    try:
        await client.ping()
        sent = await _calls(redis_process, "eval")
        busy = _make_busy(redis_process, BUSY)
        taken = await _take(store, limiter, message)
        busy.close()
        assert await _calls(redis_process, "eval") >= sent + 3  # the busy script, sent, resent
        assert limiter.refusal(taken) is None  # the one message of the burst goes on
        again = await _take(store, limiter, message)
        assert limiter.refusal(again) is not None  # and the bucket is empty now
    finally:
        await client.aclose()


async def test_takes_of_one_user_whose_replies_were_late_each_take_one_token(
    redis_process: RedisProcess,
):
    """Two messages of one user (two conversations) whose takes both came back late: each
    retry must find its own take, not only the last one written."""
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    store = RedisStore(client, KeyBuilder("slow"), StoreLimits())
    limiter = RateLimiter(LimitsSettings(messages_per_minute=1, burst=3))
    messages = [
        Message("slack", ContextKey("slack", channel, "U1"), User("U1"), "hi", f"m{channel}")
        for channel in ("C1", "C2")
    ]
    try:
        await asyncio.gather(client.ping(), client.ping())  # two connections are open
        sent = await _calls(redis_process, "eval")
        busy = _make_busy(redis_process, BUSY)
        taken = await asyncio.gather(*(_take(store, limiter, m) for m in messages))
        busy.close()
        assert await _calls(redis_process, "eval") >= sent + 5  # the busy script, sent, resent
        assert [limiter.refusal(result) for result in taken] == [None, None]
        third = await _take(store, limiter, messages[0])
        assert limiter.refusal(third) is None  # the burst of 3 had one message left
    finally:
        await client.aclose()


@pytest.mark.parametrize("repeated", [False, True])
async def test_a_summary_whose_reply_was_late_folds_its_turns_once(
    redis_process: RedisProcess, repeated: bool
):
    """The retried compare-and-trim must neither report the written summary as skipped nor,
    when the next turns repeat the folded ones, trim them too."""
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    store = RedisStore(client, KeyBuilder("slow"), StoreLimits())
    key = ContextKey("slack", "C1", "U1")
    folded = [Turn("user", "hi"), Turn("assistant", "hello")]
    kept = [*(folded if repeated else [Turn("user", "a"), Turn("assistant", "b")])]
    kept += [Turn("user", "last"), Turn("assistant", "ok")]
    try:
        await store.write_turn(TurnWrites(key, (*folded, *kept)))
        sent = await _calls(redis_process, "eval")
        busy = _make_busy(redis_process, BUSY)
        applied = await store.apply_summary(key, "greetings", folded, Usage(10, 5))
        busy.close()
        assert await _calls(redis_process, "eval") >= sent + 3  # the busy script, sent, resent
        conversation = await store.load(key)
        assert conversation.summary == "greetings"
        assert conversation.history == kept  # folded once
        assert applied  # and reported as written
        totals = await _totals(client, store, key)
        assert (totals.prompt, totals.completion) == (10, 5)  # counted once
    finally:
        await client.aclose()


async def test_a_journal_claim_whose_reply_was_late_is_still_ours(redis_process: RedisProcess):
    """Taking over a crashed process's message: the claim (an HDEL) ran, its reply came too
    late and the retry found nothing to delete. The message must still be answered here."""
    client = make_client(redis_process.url, SOCKET_TIMEOUT)
    keys = KeyBuilder("slow")
    message = Message("slack", ContextKey("slack", "C1", "U1"), User("U1"), "hi", "m1")
    journal, entry = keys.journal("gone"), RedisJournal.entry_id(message)
    try:
        await client.hset(journal, entry, "{}")
        survivor = RedisJournal(client, keys)
        sent = await _calls(redis_process, "eval")
        busy = _make_busy(redis_process, BUSY)
        assert await survivor.claim(journal, entry)
        busy.close()
        assert await _calls(redis_process, "eval") >= sent + 3  # the busy script, sent, resent
        assert not await RedisJournal(client, keys).claim(journal, entry)  # only once
        assert await client.hlen(journal) == 0
    finally:
        await client.aclose()


async def _take(store: RedisStore, limiter: RateLimiter, message: Message) -> RateResult | None:
    reads = TurnReads(message.key, history=False, rate=limiter.take(message))
    return (await store.read_turn(reads)).rate


async def _totals(client: Redis, store: RedisStore, key: ContextKey) -> Totals:
    """The conversation's usage counters as stored."""
    raw = {k.decode(): v for k, v in (await client.hgetall(store.keys.usage(key))).items()}
    return Totals(int(raw.get("prompt", 0)), int(raw.get("completion", 0)))
