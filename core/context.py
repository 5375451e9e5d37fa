"""Conversation state in Redis: history, summary and settings per conversation; locks; dedupe.

One read (a pipelined LRANGE + HGETALL + HGETALL, plus the features' reads) and one write
(a MULTI/EXEC pipeline, plus the features' writes) per turn.
When Redis is away the bot keeps answering without history: every call degrades to
"nothing stored", a warning is logged once, and the next successful call logs the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from core.keys import KeyBuilder
from core.model import ContextKey, Conversation, Turn
from core.protocols import Queue, Usage

log = logging.getLogger(__name__)

SETTINGS_FIELDS = ("summary", "persona", "model")
CHANNEL_FIELDS = ("persona", "model")

# KEYS: history, meta, usage. ARGV: summary, ttl, prompt tokens, completion tokens, n, turn 1..n.
APPLY_SUMMARY = """
local n = tonumber(ARGV[5])
local total = tonumber(ARGV[3]) + tonumber(ARGV[4])
if total > 0 then
  redis.call('HINCRBY', KEYS[3], 'prompt', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'completion', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'total', total)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[5 + i] then return 0 end
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'summary', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long and how much the store keeps."""

    max_turns: int = 40
    ttl_seconds: int = 7 * 86400
    lock_ttl: float = 60.0
    lock_wait: float = 120.0
    dedupe_ttl: int = 86400


# KEYS: history, meta. ARGV: turns to keep, idle TTL, then the turns to append.
# One command instead of four (RPUSH, LTRIM, two EXPIRE) in the turn's MULTI.
APPEND = """
for first = 3, #ARGV, 4000 do  -- unpack() has a limit of about 8000 values
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 3999, #ARGV)))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: lock. ARGV: token, TTL in ms. Takes a free lock, or renews it when it already holds
# this turn's token: a take whose reply was lost and is retried must not wait for itself.
TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lock. ARGV: token. Deletes the lock only while it still holds this turn's token.
RELEASE = Lock.LUA_RELEASE_SCRIPT


class IdempotentLock(Lock):
    """redis-py's lock (the wait, the extension) taking with `TAKE`."""

    async def do_acquire(self, token: str | bytes) -> bool:
        ttl = int(self.timeout * 1000) if self.timeout else 0
        return bool(await self.redis.eval(TAKE, 1, self.name, token, ttl))


@dataclass(slots=True)
class RedisTurnLock:
    """One turn's hold on a conversation lock: the Redis key and this turn's token.

    pending (not taken yet: lazy) -> held -> released; or unlocked (Redis failed or the
    wait ran out: the turn goes on under the in-process lock alone)."""

    name: str
    token: str
    state: Literal["pending", "held", "unlocked", "released"] = "pending"
    sent: bool = False  # a take went out: Redis may hold the lock even if no reply said so
    timer: asyncio.TimerHandle | None = None
    extending: asyncio.Task[None] | None = None
    _lock: Lock | None = None

    def redis_lock(self, redis: Redis, limits: StoreLimits) -> Lock:
        """redis-py's lock on the same key and token, for the blocking wait and extending."""
        if self._lock is None:
            self._lock = IdempotentLock(
                redis,
                self.name,
                timeout=limits.lock_ttl,
                sleep=0.02,
                blocking_timeout=limits.lock_wait,
                thread_local=False,
            )
            self._lock.local.token = self.token.encode()
        return self._lock


class RedisHealth:
    """Tracks whether Redis answers, so an outage is logged once and the recovery once."""

    def __init__(self, describe: str) -> None:
        self.up = True
        self._describe = describe

    def failed(self, exc: BaseException, doing: str) -> None:
        if self.up:
            log.warning(
                "Redis at %s unavailable while %s (%s); answering without history until it is back",
                self._describe,
                doing,
                type(exc).__name__,
            )
        self.up = False

    def ok(self) -> None:
        if not self.up:
            log.warning("Redis at %s is back; history is used again", self._describe)
        self.up = True


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
        self._local_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._count = on_round_trip or (lambda: None)

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
                taking = self._queue_take(pipe, lock)
                pipe.lrange(self.keys.history(key), 0, -1)
                pipe.hgetall(self.keys.meta(key))
                pipe.hgetall(self.keys.channel(channel or key))
                for queue in extra:
                    queue(pipe)
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "loading a conversation")
            if lock is not None and lock.state == "pending":
                lock.state = "unlocked"
            return Conversation(), [None] * len(extra)
        self.health.ok()
        if taking:
            assert lock is not None
            took, results = results[0], results[1:]
            if not await self._taken(lock, took):
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
                taking = self._queue_take(pipe, lock)
                for queue in extra:
                    queue(pipe)
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "reading")
            if lock is not None and lock.state == "pending":
                lock.state = "unlocked"
            return [None] * len(extra)
        self.health.ok()
        if taking:
            assert lock is not None
            took, results = results[0], results[1:]
            await self._taken(lock, took)
        return [_or(result, None) for result in results]

    async def save(
        self,
        key: ContextKey,
        *turns: Turn,
        trim_to: int = 0,
        extra: Sequence[Queue] = (),
        lock: RedisTurnLock | None = None,
    ) -> None:
        """Append turns, bound the history, refresh the idle TTL, plus `extra` writes (usage,
        cache), and release a held `lock`: one MULTI/EXEC round trip."""
        history, meta = self.keys.history(key), self.keys.meta(key)
        keep = trim_to or self.limits.max_turns
        if lock is not None and lock.state == "pending":
            await self._acquire(lock)  # nothing was read under it: take it before writing
        releasing = lock is not None and lock.state == "held"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                appended = (encode_turn(turn) for turn in turns)
                pipe.eval(APPEND, 2, history, meta, keep, self.limits.ttl_seconds, *appended)
                for queue in extra:
                    queue(pipe)
                if releasing:
                    assert lock is not None
                    pipe.eval(RELEASE, 1, lock.name, lock.token)
                self._count()
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "saving a turn")
            return
        self.health.ok()
        if releasing:
            assert lock is not None
            lock.state = "released"

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
        """True the first time a delivery id is seen (SET NX with a TTL), across processes.

        Fails open: when Redis is away a delivery is handled rather than dropped.
        """
        try:
            self._count()
            stored = await self.redis.set(
                self.keys.seen(namespace, delivery_id), "1", nx=True, ex=self.limits.dedupe_ttl
            )
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "checking a delivery id")
            return True
        self.health.ok()
        return bool(stored)

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except (RedisError, OSError):
            return False
        return True

    def lock(
        self, key: ContextKey, *, lazy: bool = False
    ) -> AbstractAsyncContextManager[RedisTurnLock]:
        """One turn of a conversation at a time, in arrival order.

        In-process waiters queue on a FIFO asyncio.Lock; across processes a Redis lock with a
        TTL (extended while the turn runs) holds. Without Redis, the local lock still holds.
        `lazy`: the Redis lock is not taken here but rides in the first `load_turn` or `read`
        given the yielded handle, and leaves in the MULTI of the `save` given it: two round
        trips fewer per turn.
        """
        return self._lock(key, lazy)

    @contextlib.asynccontextmanager
    async def _lock(self, key: ContextKey, lazy: bool) -> AsyncIterator[RedisTurnLock]:
        name = self.keys.lock(key)
        local, users = self._local_locks.get(name, (asyncio.Lock(), 0))
        self._local_locks[name] = (local, users + 1)
        try:
            async with local:
                held = RedisTurnLock(name, secrets.token_hex(16))
                try:
                    if not lazy:
                        await self._acquire(held)
                    yield held
                finally:
                    await self._leave(held)
        finally:
            local, users = self._local_locks[name]
            if users <= 1:
                del self._local_locks[name]
            else:
                self._local_locks[name] = (local, users - 1)

    def _queue_take(self, pipe: Any, held: RedisTurnLock | None) -> bool:
        """Queue the lock's take first in `pipe` when it is still to be taken."""
        if held is None or held.state != "pending":
            return False
        held.sent = True
        pipe.eval(TAKE, 1, held.name, held.token, int(self.limits.lock_ttl * 1000))
        return True

    async def _taken(self, held: RedisTurnLock, result: Any) -> bool:
        """After a riding take: held (True), or waited for and taken in a round trip of
        its own (False: reads made before it must be made again)."""
        if result == 1:
            self._hold(held)
            return True
        if isinstance(result, Exception):
            held.state = "unlocked"  # Redis failed this command: go on as without Redis
            return True
        await self._acquire(held)  # another process is in this conversation: wait for it
        return False

    async def _acquire(self, held: RedisTurnLock) -> None:
        lock = held.redis_lock(self.redis, self.limits)
        held.sent = True
        try:
            self._count()
            acquired = await lock.acquire(token=held.token)
        except (RedisError, OSError) as exc:
            self.health.failed(exc, "taking a conversation lock")
            acquired = False
        else:
            if not acquired:
                log.warning(
                    "conversation lock %s not free after %ss", held.name, self.limits.lock_wait
                )
        if acquired:
            self._hold(held)
        else:
            held.state = "unlocked"

    def _hold(self, held: RedisTurnLock) -> None:
        """The lock is ours: extend it every third of its TTL while the turn runs (a timer,
        not a task per turn: most turns end long before the first extension)."""
        held.state = "held"
        loop = asyncio.get_running_loop()
        period = self.limits.lock_ttl / 3

        def extend_soon() -> None:
            if held.state != "held":
                return
            if held.extending is None or held.extending.done():  # never two at once
                held.extending = asyncio.create_task(self._extend(held), name="lock-extend")
            held.timer = loop.call_later(period, extend_soon)

        held.timer = loop.call_later(period, extend_soon)

    async def _extend(self, held: RedisTurnLock) -> None:
        with contextlib.suppress(LockError, RedisError, OSError):
            await held.redis_lock(self.redis, self.limits).extend(
                self.limits.lock_ttl, replace_ttl=True
            )

    async def _leave(self, held: RedisTurnLock) -> None:
        """Stop extending; release the lock unless a `save` already did.

        Also after a take whose outcome is unknown (cancelled, or Redis failed while it was
        out): the release deletes only this turn's token, so it is always safe. Not while
        Redis is marked down: the lock's TTL frees it then, without a turn waiting on a
        timeout here."""
        state, held.state = held.state, "released"
        if held.timer is not None:
            held.timer.cancel()
        if held.extending is not None:
            # Waited for, never cancelled: a cancel landing as a Redis call times out comes
            # back as TimeoutError (an OSError) and could be swallowed as a Redis failure.
            await asyncio.wait({held.extending})
        unknown = held.sent and state in ("pending", "unlocked") and self.health.up
        if state == "held" or unknown:
            with contextlib.suppress(RedisError, OSError):
                self._count()
                await self.redis.eval(RELEASE, 1, held.name, held.token)


def _or(result: Any, default: Any) -> Any:
    """A pipeline result, or `default` when that one command failed (logged, never fatal)."""
    if isinstance(result, Exception):
        log.warning("a Redis command failed: %s", type(result).__name__)
        return default
    return result


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
