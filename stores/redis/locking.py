"""Conversation locks: one turn of a conversation at a time, across processes.

A FIFO asyncio.Lock per name orders the waiters of one process; a Redis lock with a TTL, held
by a token per turn, orders processes. The Redis lock can ride in the turn's own round
trips: its take first in the read pipeline, its release last in the save's MULTI, so it adds
none (`RedisStore.lock(key, lazy=True)`). It is extended by a timer while a long answer
streams, and a lock whose holder crashed frees itself at its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core.storage import TurnLock
from stores.redis.health import FAILURES, RedisHealth, StoreLimits
from stores.redis.scripts import RELEASE, TAKE

log = logging.getLogger(__name__)


class IdempotentLock(Lock):
    """redis-py's lock (the wait, the extension) taking with `TAKE`."""

    async def do_acquire(self, token: str | bytes) -> bool:
        ttl = int(self.timeout * 1000) if self.timeout else 0
        return bool(await self.redis.eval(TAKE, 1, self.name, token, ttl))


@dataclass(slots=True)
class RedisTurnLock(TurnLock):
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


class ConversationLocks:
    """The locks of one store: its Redis, its limits, its health and round-trip count."""

    def __init__(
        self,
        redis: Redis,
        limits: StoreLimits,
        health: RedisHealth,
        count: Callable[[], None],
    ) -> None:
        self.redis = redis
        self.limits = limits
        self.health = health
        self._count = count
        self._local_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str, *, lazy: bool = False) -> AsyncIterator[RedisTurnLock]:
        """One holder of `name` at a time, in arrival order.

        In-process waiters queue on a FIFO asyncio.Lock; across processes a Redis lock with a
        TTL (extended while the holder runs) holds. Without Redis, the local lock still
        holds. `lazy`: the Redis lock is not taken here but by the first pipeline that
        `queue_take`s it (then `taken`), and left by the write that carries its token (then
        `released`).
        """
        local, users = self._local_locks.get(name, (asyncio.Lock(), 0))
        self._local_locks[name] = (local, users + 1)
        try:
            async with local:
                held = RedisTurnLock(name, secrets.token_hex(16))
                try:
                    if not lazy:
                        await self.acquire(held)
                    yield held
                finally:
                    await self._leave(held)
        finally:
            local, users = self._local_locks[name]
            if users <= 1:
                del self._local_locks[name]
            else:
                self._local_locks[name] = (local, users - 1)

    def queue_take(self, pipe: Any, held: RedisTurnLock | None) -> bool:
        """Queue the lock's take first in `pipe` when it is still to be taken."""
        if held is None or held.state != "pending":
            return False
        held.sent = True
        pipe.eval(TAKE, 1, held.name, held.token, int(self.limits.lock_ttl * 1000))
        return True

    @staticmethod
    def not_taken(held: RedisTurnLock | None) -> None:
        """The pipeline carrying a take failed: the turn goes on under the local lock alone.
        Had the take landed, `hold` releases it at the end (or, Redis being down, its TTL)."""
        if held is not None and held.state == "pending":
            held.state = "unlocked"

    async def taken(self, held: RedisTurnLock, result: Any) -> bool:
        """After a riding take: held (True), or waited for and taken in a round trip of
        its own (False: reads made before it must be made again)."""
        if result == 1:
            self._hold(held)
            return True
        if isinstance(result, Exception):
            held.state = "unlocked"  # Redis failed this command: go on as without Redis
            return True
        await self.acquire(held)  # another process is in this conversation: wait for it
        return False

    async def acquire(self, held: RedisTurnLock) -> None:
        lock = held.redis_lock(self.redis, self.limits)
        held.sent = True
        try:
            self._count()
            acquired = await lock.acquire(token=held.token)
        except FAILURES as exc:
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
        with contextlib.suppress(LockError, *FAILURES):
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
            with contextlib.suppress(*FAILURES):
                self._count()
                await self.redis.eval(RELEASE, 1, held.name, held.token)

    @staticmethod
    def released(held: RedisTurnLock) -> None:
        """The pipeline that carried the release ran."""
        held.state = "released"
