"""Conversation state in Redis: history, summary and settings per conversation; locks; dedupe.

One read (a pipelined LRANGE + HGETALL + HGETALL, plus the features' reads) and one write
(a MULTI/EXEC pipeline, plus the features' writes) per turn.
When Redis is away the bot keeps answering without history: every call degrades to
"nothing stored", a warning is logged once, and the next successful call logs the recovery.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import KeyBuilder
from core.model import ContextKey, Conversation, Turn
from core.protocols import PlaceState, Queue, Usage
from stores.redis.health import RedisHealth, StoreLimits
from stores.redis.locking import ConversationLocks, RedisTurnLock

log = logging.getLogger(__name__)

SETTINGS_FIELDS = ("summary", "persona", "model")
CHANNEL_FIELDS = ("persona", "model")

# Writes that a resend must not repeat (the delivery claim, a history append, a summary's fold,
# usage counters; also the rate-limit take and the journal's claim elsewhere) carry a token and
# leave it behind: redis-py sends a command again when its reply is late, though the first one
# may have run, and the second must then change nothing (tests/reliability/
# test_redis_slow_reply.py).

# KEYS: history, meta, usage. ARGV: summary, ttl, prompt tokens, completion tokens, write token,
# n, turn 1..n. The token is also left in meta's `summarized` once the turns are folded: a retry
# then neither reports the summary as skipped nor folds turns that repeat the folded ones.
APPLY_SUMMARY = """
if redis.call('HGET', KEYS[2], 'summarized') == ARGV[5] then return 1 end
local n = tonumber(ARGV[6])
local total = tonumber(ARGV[3]) + tonumber(ARGV[4])
if total > 0 and redis.call('HGET', KEYS[3], 'written') ~= ARGV[5] then
  redis.call('HINCRBY', KEYS[3], 'prompt', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'completion', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'total', total)
  redis.call('HSET', KEYS[3], 'written', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[6 + i] then return 0 end
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'summary', ARGV[1], 'summarized', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


# KEYS: the delivery's seen key. ARGV: this claim's token, TTL in seconds. 1: first seen.
# A resent claim finds its own token and still sees the delivery as new, not as a duplicate.
FIRST_SEEN = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0
"""

# KEYS: the delivery's seen key, the conversation's pending set. ARGV: this claim's token, the
# seen TTL in seconds, the place (`order:delivery`), the pending set's TTL in ms.
# {first seen, the place pending just before this one or false}. Resent: as FIRST_SEEN.
CLAIM_PLACE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return {0, false} end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local ahead = redis.call('ZREVRANGEBYLEX', KEYS[2], '(' .. ARGV[3], '-', 'LIMIT', 0, 1)
return {1, ahead[1] or false}
"""

# KEYS: history, meta. ARGV: turns to keep, idle TTL, write token, then the turns to append.
# One command instead of four (RPUSH, LTRIM, two EXPIRE) in the turn's MULTI.
APPEND = """
if redis.call('HGET', KEYS[2], 'written') == ARGV[3] then return 0 end
for first = 4, #ARGV, 4000 do  -- unpack() has a limit of about 8000 values
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 3999, #ARGV)))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('HSET', KEYS[2], 'written', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def encode_turn(turn: Turn) -> str:
    data = {"r": turn.role, "c": turn.content}
    if turn.name:
        data["n"] = turn.name
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def decode_turn(raw: str | bytes) -> Turn | None:
    try:
        data = json.loads(raw)
        return Turn(data["r"], data["c"], data.get("n", ""))
    except (ValueError, KeyError, TypeError):
        return None  # a corrupt entry is skipped, never fatal


class RedisStore:
    """The `Store` and `Deduper` on one Redis connection pool."""

    def __init__(
        self,
        redis: Redis,
        keys: KeyBuilder,
        limits: StoreLimits,
        *,
        describe: str = "redis",
        on_round_trip: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits
        self.health = RedisHealth(describe)
        self._count = on_round_trip or (lambda: None)
        self.locks = ConversationLocks(redis, limits, self.health, self._count)

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation:
        """History and settings in one round trip; an empty conversation when Redis is away."""
        conversation, _ = await self.load_turn(key, channel=channel)
        return conversation

    async def load_turn(
        self,
        key: ContextKey,
        *,
        channel: ContextKey | None = None,
        extra: Sequence[Queue] = (),
        lock: RedisTurnLock | None = None,
    ) -> tuple[Conversation, list[Any]]:
        """The conversation plus `extra` reads (rate limit, usage, cache) in ONE round trip.

        `channel` is the message's own key, whose channel defaults are read too. A pending
        `lock` is taken in the same round trip; when another process holds it, the turn waits
        for it and reads the conversation again (the extras are not repeated: a rate-limit
        take must count once). When Redis is away: an empty conversation, and None for every
        extra (features fail open).
        """
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                taking = self.locks.queue_take(pipe, lock)
                pipe.lrange(self.keys.history(key), 0, -1)
                pipe.hgetall(self.keys.meta(key))
                pipe.hgetall(self.keys.channel(channel or key))
                for queue in extra:
                    queue(pipe)
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "loading a conversation")
            self.locks.not_taken(lock)
            return Conversation(), [None] * len(extra)
        self.health.ok()
        if taking:
            assert lock is not None
            took, results = results[0], results[1:]
            if not await self.locks.taken(lock, took):
                conversation, _ = await self.load_turn(key, channel=channel, lock=lock)
                return conversation, [_or(result, None) for result in results[3:]]
        raw_history, meta, chan = _or(results[0], []), _or(results[1], {}), _or(results[2], {})
        history = [turn for raw in raw_history if (turn := decode_turn(raw)) is not None]
        settings = {_text(k): _text(v) for k, v in meta.items()}
        defaults = {_text(k): _text(v) for k, v in chan.items()}
        conversation = Conversation(
            history=history,
            summary=settings.get("summary", ""),
            persona=settings.get("persona", ""),
            model=settings.get("model", ""),
            channel_persona=defaults.get("persona", ""),
            channel_model=defaults.get("model", ""),
        )
        return conversation, [_or(result, None) for result in results[3:]]

    async def read(self, extra: Sequence[Queue], *, lock: RedisTurnLock | None = None) -> list[Any]:
        """Feature reads without a conversation, in one round trip; None each when Redis is
        away. A pending `lock` is taken in the same round trip (waited for when taken)."""
        taking_lock = lock is not None and lock.state == "pending"
        if not extra and not taking_lock:
            return []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                taking = self.locks.queue_take(pipe, lock)
                for queue in extra:
                    queue(pipe)
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "reading")
            self.locks.not_taken(lock)
            return [None] * len(extra)
        self.health.ok()
        if taking:
            assert lock is not None
            took, results = results[0], results[1:]
            await self.locks.taken(lock, took)
        return [_or(result, None) for result in results]

    async def save(
        self,
        key: ContextKey,
        *turns: Turn,
        trim_to: int = 0,
        extra: Sequence[Queue] = (),
        lock: RedisTurnLock | None = None,
    ) -> bool:
        """Append turns, bound the history, refresh the idle TTL, plus `extra` writes (usage,
        cache), and release a held `lock`: one MULTI/EXEC round trip. False when Redis failed
        (logged; the turn goes unrecorded, as without Redis)."""
        history, meta = self.keys.history(key), self.keys.meta(key)
        keep = trim_to or self.limits.max_turns
        if lock is not None and lock.state == "pending":
            await self.locks.acquire(lock)  # nothing was read under it: take it before writing
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                appended = (encode_turn(turn) for turn in turns)
                token = secrets.token_hex(8)
                args: tuple[int | str, ...] = (keep, self.limits.ttl_seconds, token, *appended)
                pipe.eval(APPEND, 2, history, meta, *args)
                for queue in extra:
                    queue(pipe)
                releasing = self.locks.queue_release(pipe, lock)
                self._count()
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "saving a turn")
            return False
        self.health.ok()
        if releasing:
            assert lock is not None
            self.locks.released(lock)
        return True

    async def set_setting(self, key: ContextKey, name: str, value: str) -> None:
        """Set (or with an empty value, clear) one conversation setting."""
        if name not in SETTINGS_FIELDS:
            raise ValueError(f"unknown conversation setting {name!r}")
        meta = self.keys.meta(key)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if value:
                    pipe.hset(meta, name, value)
                else:
                    pipe.hdel(meta, name)
                pipe.expire(meta, self.limits.ttl_seconds)
                self._count()
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "saving a setting")
            raise
        self.health.ok()

    async def set_channel_setting(self, channel: ContextKey, name: str, value: str) -> None:
        """Set (or clear) a channel default (persona, model); kept until changed."""
        if name not in CHANNEL_FIELDS:
            raise ValueError(f"unknown channel setting {name!r}")
        try:
            self._count()
            if value:
                await self.redis.hset(self.keys.channel(channel), name, value)
            else:
                await self.redis.hdel(self.keys.channel(channel), name)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "saving a channel setting")
            raise
        self.health.ok()

    async def apply_summary(
        self, key: ContextKey, summary: str, folded: Sequence[Turn], usage: Usage
    ) -> bool:
        """Replace the summary and drop `folded` from the head of the history, in one atomic
        script, only if the history still starts with exactly those turns (a turn trimmed or
        a /reset since then makes it a no-op). The summary call's usage is recorded always."""
        args: list[str | int] = [
            summary,
            self.limits.ttl_seconds,
            usage.prompt_tokens,
            usage.completion_tokens,
            secrets.token_hex(8),
        ]
        args += [len(folded), *(encode_turn(turn) for turn in folded)]
        keys = [self.keys.history(key), self.keys.meta(key), self.keys.usage(key)]
        try:
            self._count()
            applied = await self.redis.eval(APPLY_SUMMARY, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "saving a summary")
            return False
        self.health.ok()
        return bool(applied)

    async def reset(self, key: ContextKey) -> None:
        """Forget the conversation's history and summary; keep persona and model choices."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.history(key))
                pipe.hdel(self.keys.meta(key), "summary")
                self._count()
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "resetting a conversation")
            raise
        self.health.ok()

    async def first_seen(self, namespace: str, delivery_id: str) -> bool:
        """True the first time a delivery id is seen (claimed with a token and a TTL), across
        processes.

        Fails open: when Redis is away a delivery is handled rather than dropped.
        """
        seen, token = self.keys.seen(namespace, delivery_id), secrets.token_hex(8)
        try:
            self._count()
            first = await self.redis.eval(FIRST_SEEN, 1, seen, token, self.limits.dedupe_ttl)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "checking a delivery id")
            return True
        self.health.ok()
        return bool(first)

    async def claim(
        self, line: ContextKey, namespace: str, delivery_id: str, place: str
    ) -> tuple[bool, str]:
        """`first_seen`, and the place taken in the conversation's pending set, in one trip.

        Fails open, as `first_seen`: without Redis a delivery is handled, waiting for none."""
        seen = self.keys.seen_in(line, namespace, delivery_id)
        pending_ttl = int(self.limits.lock_wait * 1000)
        try:
            self._count()
            first, ahead = await self.redis.eval(
                CLAIM_PLACE, 2, seen, self.keys.pending(line), secrets.token_hex(8),
                self.limits.dedupe_ttl, place, pending_ttl,
            )  # fmt: skip
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "checking a delivery id")
            return True, ""
        self.health.ok()
        return bool(first), _text(ahead) if ahead else ""

    async def pending(self, line: ContextKey, place: str) -> PlaceState:
        owner = place.rpartition(":")[2]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zscore(self.keys.pending(line), place)
                pipe.exists(self.keys.owner(owner))
                self._count()
                score, alive = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "reading a conversation's pending messages")
            return "answered"  # fail open: wait for nothing
        if score is None:
            return "answered"
        return "pending" if alive else "orphaned"

    async def leave(self, line: ContextKey, place: str) -> None:
        try:
            self._count()
            await self.redis.zrem(self.keys.pending(line), place)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "updating a conversation's pending messages")

    def queue_leave(self, line: ContextKey, place: str) -> Queue:
        pending = self.keys.pending(line)
        return lambda pipe: pipe.zrem(pending, place)

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except (RedisError, OSError):
            return False
        return True

    def lock(
        self, key: ContextKey, *, lazy: bool = False
    ) -> AbstractAsyncContextManager[RedisTurnLock]:
        """One turn of a conversation at a time (`stores/redis/locking.py`). `lazy`: the Redis lock
        rides in the first `load_turn` or `read` given the handle and leaves in the `save`
        given it."""
        return self.locks.hold(self.keys.lock(key), lazy=lazy)


def _or(result: Any, default: Any) -> Any:
    """A pipeline result, or `default` when that one command failed (logged, never fatal)."""
    if isinstance(result, Exception):
        log.warning("a Redis command failed: %s", type(result).__name__)
        return default
    return result


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
