"""Conversation state in Redis behind the core's store port (`core/storage.py`).

One read (a pipeline: the lock's take, history, settings, the channel's defaults, the
rate-limit take, today's usage, a cached answer, the journal entry) and one write (a
MULTI/EXEC: the turns, usage, the cache, the journal entry's and the delivery claim's
release, the lock's release) per turn. On Redis Cluster the conversation's part is one
script in its slot, and what lives elsewhere (the user's usage counters, the cache) goes in
the same pipeline: still one round trip of latency, each part idempotent, but no longer one
transaction; the journal entry leaves just after (docs/operating.md#redis-cluster).
When Redis is away the bot keeps answering without history: every call degrades to
"nothing stored", a warning is logged once, and the next successful call logs the recovery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from core.model import ContextKey, Conversation, Image, Message, Turn
from core.protocols import Usage
from core.storage import (
    CacheEntry,
    Erased,
    Person,
    PersonData,
    PlaceState,
    RateResult,
    RetakeState,
    Totals,
    TurnLock,
    TurnReads,
    TurnState,
    TurnWrites,
    UserPeriod,
)
from stores.people import theirs as _theirs
from stores.redis.health import FAILURES, RedisHealth, StoreLimits
from stores.redis.journal import RedisJournal
from stores.redis.keys import KeyBuilder
from stores.redis.locking import ConversationLocks, RedisTurnLock
from stores.redis.scripts import (
    APPLY_SUMMARY,
    CLAIM_PLACE,
    ERASE_TURNS,
    FIRST_SEEN,
    RECORD,
    RESET,
    RETAKE,
    TOKEN_BUCKET,
    WRITE_TURN,
)

log = logging.getLogger(__name__)

SETTINGS_FIELDS = ("summary", "persona", "model", "voice")
CHANNEL_FIELDS = ("persona", "model")

AnyRedis = Redis | RedisCluster


def encode_turn(turn: Turn) -> str:
    data = {"r": turn.role, "c": turn.content}
    if turn.name:
        data["n"] = turn.name
    if turn.user:
        data["u"] = turn.user
    encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if turn.images:  # ids only: the bytes are blobs of their own, with a shorter TTL
        images = json.dumps([[i.id, i.mime_type] for i in turn.images], separators=(",", ":"))
        encoded = f'{encoded[:-1]},"i":{images}}}'
    return encoded


def decode_turn(raw: str | bytes) -> Turn | None:
    try:
        data = json.loads(raw)
        images = tuple(Image(str(i), str(m)) for i, m in data.get("i", ()))
        return Turn(data["r"], data["c"], data.get("n", ""), user=data.get("u", ""), images=images)
    except (ValueError, KeyError, TypeError):
        return None  # a corrupt entry is skipped, never fatal


class RedisStore:
    """The `Store`, `Deliveries` and `AnswerJournal` on one Redis (standalone, Sentinel or
    Cluster) client."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: KeyBuilder,
        limits: StoreLimits,
        *,
        describe: str = "redis",
        on_round_trip: Callable[[], None] | None = None,
        heartbeat_ttl: float = 15.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits
        self.cluster = isinstance(redis, RedisCluster)
        self.health = RedisHealth(describe)
        self._count = on_round_trip or (lambda: None)
        self.locks = ConversationLocks(redis, limits, self.health, self._count)  # type: ignore[arg-type]
        self.journal = RedisJournal(redis, keys, heartbeat_ttl=heartbeat_ttl)
        self._after: set[asyncio.Task[None]] = set()

    @property
    def where(self) -> str:
        return self.health.describe

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation:
        """History and settings in one round trip; an empty conversation when Redis is away."""
        state = await self.read_turn(TurnReads(key, channel=channel))
        return state.conversation

    async def read_turn(self, reads: TurnReads, *, lock: TurnLock | None = None) -> TurnState:
        """Everything `reads` names in ONE pipelined round trip.

        A pending `lock` is taken in the same round trip; when another process holds it, the
        turn waits for it and reads the conversation again (the other reads are not repeated:
        a rate-limit take must count once). When Redis is away: an empty conversation, and
        None for every other part (policies fail open).
        """
        held = _redis_lock(lock)
        key = reads.conversation
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                taking = self.locks.queue_take(pipe, held)
                slots = self._queue_reads(pipe, reads)
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except FAILURES as exc:
            self.health.failed(exc, "loading a conversation")
            self.locks.not_taken(held)
            return TurnState()
        self.health.ok()
        if taking:
            assert held is not None
            took, results = results[0], results[1:]
            if not await self.locks.taken(held, took) and reads.history:
                # waited for another process's turn: what it wrote must be read
                again = await self.read_turn(TurnReads(key, channel=reads.channel), lock=held)
                return self._state(reads, slots, results, again.conversation)
        return self._state(reads, slots, results, None)

    def _queue_reads(self, pipe: Any, reads: TurnReads) -> dict[str, int]:
        """Queue what `reads` names; the index of each part's first result."""
        slots: dict[str, int] = {}

        queued = 0

        def add(name: str, count: int = 1) -> None:
            nonlocal queued
            slots[name] = queued
            queued += count

        key = reads.conversation
        if reads.history:
            add("conversation", 3)
            pipe.lrange(self.keys.history(key), 0, -1)
            pipe.hgetall(self.keys.meta(key))
            pipe.hgetall(self.keys.channel(reads.channel or key))
        if reads.journal is not None:
            add("journal")
            self.journal.queue_begin(pipe, reads.journal)
        if reads.rate is not None:
            add("rate")
            take = reads.rate
            bucket = self.keys.bucket(take.platform, take.user)
            per_ms = repr(take.per_minute / 60_000)
            pipe.eval(TOKEN_BUCKET, 1, bucket, take.capacity, per_ms, 1, take.token)
        if reads.budget is not None:
            add("budget")
            day = reads.budget
            pipe.hget(self.keys.user_usage(day.platform, day.user, day.period), "total")
        if reads.cache:
            add("cache")
            pipe.get(self.keys.cache(reads.cache))
        if reads.masks:
            add("masks")
            pipe.hgetall(self.keys.masks(key))
        return slots

    def _state(
        self,
        reads: TurnReads,
        slots: dict[str, int],
        results: list[Any],
        conversation: Conversation | None,
    ) -> TurnState:
        def part(name: str, offset: int = 0) -> Any:
            """A result, or None when not asked or when that one command failed (logged)."""
            return _or(results[slots[name] + offset], None) if name in slots else None

        if conversation is None and "conversation" in slots:
            conversation = _conversation(*(part("conversation", i) for i in range(3)))
        used = part("budget")
        return TurnState(
            conversation=conversation or Conversation(),
            rate=_rate(part("rate")),
            used_today=_int(used) if _asked(slots, results, "budget") else None,
            cached=_answer(part("cache")),
            masks={_text(k): _text(v) for k, v in (part("masks") or {}).items()},
        )

    async def write_turn(self, writes: TurnWrites, *, lock: TurnLock | None = None) -> bool:
        """Everything `writes` names in ONE round trip, releasing a held `lock`.

        The conversation's part is one script (`WRITE_TURN`); with the user's counters, the
        cache and the journal entry's removal it goes in one MULTI/EXEC on a standalone Redis.
        On a Cluster those live in other slots: the counters and the cache go in the same
        pipeline, without MULTI (each is idempotent), and the journal entry leaves once the
        script landed (so an entry never goes while its turn is unrecorded). True
        when the conversation's part landed; False when Redis failed (logged; the turn goes
        unrecorded, as without Redis)."""
        held = _redis_lock(lock)
        if held is not None and held.state == "pending":
            await self.locks.acquire(held)  # nothing was read under it: take it before writing
        releasing = held is not None and held.state == "held"
        try:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                self._queue_turn_script(pipe, writes, held.token if releasing and held else "")
                for image in writes.images:  # the conversation's slot too
                    pipe.set(
                        self.keys.image(writes.conversation, image.id), image.data, ex=image.ttl
                    )
                if writes.masks:  # the conversation's slot: on a Cluster, the same node
                    masks = self.keys.masks(writes.conversation)
                    pipe.hset(masks, mapping=dict(writes.masks))
                    pipe.expire(masks, self.limits.ttl_seconds)
                self._queue_other_writes(pipe, writes)
                if writes.answered is not None and not self.cluster:
                    self.journal.queue_end(pipe, writes.answered)
                self._count()
                results = await pipe.execute(raise_on_error=not self.cluster)
        except FAILURES as exc:
            self.health.failed(exc, "saving a turn")
            return False
        if isinstance(results[0], Exception):  # Cluster: the conversation's node failed it
            self.health.failed(results[0], "saving a turn")
            return False
        self.health.ok()
        for failed in (r for r in results[1:] if isinstance(r, Exception)):
            log.warning("a turn's usage or cache write failed: %s", type(failed).__name__)
        if releasing:
            assert held is not None
            self.locks.released(held)
        if writes.answered is not None and self.cluster:
            self._later(self.journal.forget(writes.answered))
        return True

    def _queue_turn_script(self, pipe: Any, writes: TurnWrites, lock_token: str) -> None:
        """`WRITE_TURN`: what lives in the conversation's slot, in one atomic command."""
        key = writes.conversation
        usage = writes.usage
        leave = writes.leave if writes.leave and writes.leave.line == key else None
        keys = (
            self.keys.history(key), self.keys.meta(key), self.keys.usage(key),
            self.keys.pending(key), self.keys.lock(key),
        )  # fmt: skip
        args = (
            writes.token, self.limits.max_turns, self.limits.ttl_seconds,
            usage.token if usage else "",
            usage.usage.prompt_tokens if usage else 0,
            usage.usage.completion_tokens if usage else 0,
            leave.place if leave else "",
            lock_token,
            *(encode_turn(turn) for turn in writes.turns),
        )  # fmt: skip
        pipe.eval(WRITE_TURN, len(keys), *keys, *args)

    def _queue_other_writes(self, pipe: Any, writes: TurnWrites) -> None:
        """What lives elsewhere: the user's counters, the cache, a place in another line."""
        if writes.usage is not None:
            r, u = writes.usage, writes.usage.usage
            pipe.eval(
                RECORD, 2, self.keys.user_usage(r.platform, r.user, r.day),
                self.keys.user_usage(r.platform, r.user, r.month),
                u.prompt_tokens, u.completion_tokens, u.total, r.day_ttl, r.month_ttl, r.token,
                r.images,
            )  # fmt: skip
        if writes.cache is not None:
            c = writes.cache
            pipe.set(self.keys.cache(c.key), c.answer, ex=c.ttl)
        if writes.leave is not None and writes.leave.line != writes.conversation:
            pipe.zrem(self.keys.pending(writes.leave.line), writes.leave.place)
        if writes.person is not None and writes.turns:  # theirs to export and erase
            who = (writes.person.platform, writes.person.user)
            kept = max(self.limits.ttl_seconds, self.limits.profile_ttl)
            conversations = self.keys.person_conversations(*who)
            pipe.hset(conversations, writes.conversation.id, "own" if writes.own else "shared")
            pipe.expire(conversations, kept)
            if writes.cache is not None:
                cached = self.keys.person_cache(*who)
                pipe.sadd(cached, writes.cache.key)
                pipe.expire(cached, kept)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the turn, without it waiting (kept referenced until done)."""
        task = asyncio.create_task(work, name="store-after-turn")
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    async def cached(self, key: str) -> str | None:
        try:
            self._count()
            raw = await self.redis.get(self.keys.cache(key))
        except FAILURES as exc:
            self.health.failed(exc, "reading the cache")
            return None
        self.health.ok()
        return _answer(raw)

    async def remember(self, entry: CacheEntry) -> None:
        """Keep an answer under `entry.key` on its own (logged, never raised)."""
        try:
            self._count()
            await self.redis.set(self.keys.cache(entry.key), entry.answer, ex=entry.ttl)
        except FAILURES as exc:
            self.health.failed(exc, "remembering an answer")
            return
        self.health.ok()

    async def forget(self, key: ContextKey, message: Message) -> None:
        await self.journal.forget(message)

    async def usage(self, periods: Sequence[UserPeriod]) -> list[Totals]:
        """The users' counters in `periods` (one round trip; zeros when Redis is away)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for p in periods:
                    pipe.hgetall(self.keys.user_usage(p.platform, p.user, p.period))
                self._count()
                results = await pipe.execute(raise_on_error=False)
        except FAILURES as exc:
            self.health.failed(exc, "reading usage")
            return [Totals() for _ in periods]
        self.health.ok()
        return [_totals(_or(raw, {})) for raw in results]

    async def images(self, key: ContextKey, ids: Sequence[str]) -> dict[str, bytes]:
        """MGET of the conversation's image blobs (one slot: one command on a Cluster)."""
        if not ids:
            return {}
        try:
            self._count()
            found = await self.redis.mget([self.keys.image(key, i) for i in ids])
        except FAILURES as exc:
            self.health.failed(exc, "reading images")
            return {}
        self.health.ok()
        return {i: _bytes(data) for i, data in zip(ids, found, strict=True) if data is not None}

    async def set_setting(self, key: ContextKey, name: str, value: str) -> None:
        """Set (or with an empty value, clear) one conversation setting."""
        if name not in SETTINGS_FIELDS:
            raise ValueError(f"unknown conversation setting {name!r}")
        meta = self.keys.meta(key)
        try:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                if value:
                    pipe.hset(meta, name, value)
                else:
                    pipe.hdel(meta, name)
                pipe.expire(meta, self.limits.ttl_seconds)
                self._count()
                await pipe.execute()
        except FAILURES as exc:
            self.health.failed(exc, "saving a setting")
            raise
        self.health.ok()

    async def set_channel_setting(self, channel: ContextKey, name: str, value: str) -> None:
        """Set (or clear) a channel default (persona, model); kept `profile_ttl` seconds after
        its last change."""
        if name not in CHANNEL_FIELDS:
            raise ValueError(f"unknown channel setting {name!r}")
        chan = self.keys.channel(channel)
        try:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                if value:
                    pipe.hset(chan, name, value)
                else:
                    pipe.hdel(chan, name)
                pipe.expire(chan, self.limits.profile_ttl)
                self._count()
                await pipe.execute()
        except FAILURES as exc:
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
        except FAILURES as exc:
            self.health.failed(exc, "saving a summary")
            return False
        self.health.ok()
        return bool(applied)

    async def reset(self, key: ContextKey) -> None:
        """Forget the conversation's history and summary; keep persona and model choices."""
        try:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                pipe.delete(self.keys.history(key), self.keys.masks(key))
                pipe.hdel(self.keys.meta(key), "summary")
                self._count()
                await pipe.execute()
        except FAILURES as exc:
            self.health.failed(exc, "resetting a conversation")
            raise
        self.health.ok()

    async def person(self, person: Person) -> PersonData:
        """Read through the person's index of conversations (raises what Redis raises)."""
        who = (person.platform, person.user)
        conversations: dict[str, list[Turn]] = {}
        settings: dict[str, dict[str, str]] = {}
        index = await self.redis.hgetall(self.keys.person_conversations(*who))
        for raw, kind in index.items():
            conversation = _text(raw)
            base = self.keys.conversation(conversation)
            history = [t for r in await self.redis.lrange(base + ":history", 0, -1)
                       if (t := decode_turn(r)) is not None]  # fmt: skip
            theirs = _theirs(history, person.user)
            if theirs:
                conversations[conversation] = theirs
            if _text(kind) == "own":
                meta = await self.redis.hgetall(base + ":meta")
                kept = {_text(k): _text(v) for k, v in meta.items()}
                chosen = {k: v for k, v in kept.items() if k in SETTINGS_FIELDS}
                if chosen:
                    settings[conversation] = chosen
        usage: dict[str, Totals] = {}
        pattern = self.keys.user_usage_pattern(*who)
        async for raw in self.redis.scan_iter(match=pattern, count=500):
            key = _text(raw)
            usage[key.rpartition(":")[2]] = _totals(await self.redis.hgetall(key))
        approvals = []
        for raw in await self.redis.smembers(self.keys.person_approvals(*who)):
            record = await self.redis.get(self.keys.approval(_text(raw)))
            if record is not None:
                approvals.append(_text(record))
        return PersonData(conversations, settings, usage, approvals)

    async def erase(self, person: Person) -> Erased:
        """Delete through the person's index (raises what Redis raises; run it again to
        finish: each step is idempotent)."""
        who = (person.platform, person.user)
        index = self.keys.person_conversations(*who)
        owned = turns = 0
        for raw, kind in (await self.redis.hgetall(index)).items():
            conversation = _text(raw)
            base = self.keys.conversation(conversation)
            own = _text(kind) == "own"
            await self._erase_images(base, person.user, own)
            if own:
                suffixes = (":history", ":meta", ":usage", ":masks")
                await self.redis.delete(*(base + suffix for suffix in suffixes))
                owned += 1
            else:
                turns += int(await self.redis.eval(ERASE_TURNS, 1, base + ":history", person.user))
        cached_index = self.keys.person_cache(*who)
        cached = [_text(raw) for raw in await self.redis.smembers(cached_index)]
        for key in cached:  # one by one: on a Cluster each is in its own slot
            await self.redis.delete(self.keys.cache(key))
        usage = 0
        async for raw in self.redis.scan_iter(match=self.keys.user_usage_pattern(*who), count=500):
            usage += int(await self.redis.delete(raw))
        approvals_index = self.keys.person_approvals(*who)
        approvals = 0
        for raw in await self.redis.smembers(approvals_index):  # one by one: other slots
            approvals += int(await self.redis.delete(self.keys.approval(_text(raw))))
        await self.redis.delete(index, cached_index, approvals_index, self.keys.bucket(*who))
        return Erased(owned, turns, usage, len(cached), approvals)

    async def hold_approval(self, approval_id: str, person: Person, record: str, ttl: int) -> None:
        index = self.keys.person_approvals(person.platform, person.user)
        async with self.redis.pipeline(transaction=False) as pipe:  # two slots on a Cluster
            pipe.set(self.keys.approval(approval_id), record, ex=ttl)
            pipe.sadd(index, approval_id)
            pipe.expire(index, ttl)
            self._count()
            await pipe.execute()

    async def approval(self, approval_id: str) -> str | None:
        self._count()
        raw = await self.redis.get(self.keys.approval(approval_id))
        return None if raw is None else _text(raw)

    async def take_approval(self, approval_id: str) -> str | None:
        self._count()
        raw = await self.redis.getdel(self.keys.approval(approval_id))
        return None if raw is None else _text(raw)

    async def _erase_images(self, base: str, user: str, own: bool) -> None:
        """The image blobs of the person's turns (all of an own conversation's)."""
        history = [decode_turn(raw) for raw in await self.redis.lrange(base + ":history", 0, -1)]
        ids = [
            image.id
            for turn in history
            if turn is not None and (own or turn.user == user)
            for image in turn.images
        ]
        if ids:
            await self.redis.delete(*(f"{base}:image:{i}" for i in ids))

    async def first_seen(self, namespace: str, delivery_id: str) -> bool:
        """True the first time a delivery id is seen (claimed with a token and a TTL), across
        processes.

        Fails open: when Redis is away a delivery is handled rather than dropped.
        """
        seen, token = self.keys.seen(namespace, delivery_id), secrets.token_hex(8)
        try:
            self._count()
            first = await self.redis.eval(FIRST_SEEN, 1, seen, token, self.limits.dedupe_ttl)
        except FAILURES as exc:
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
        pending_ttl = int((self.limits.pending_ttl or self.limits.lock_wait) * 1000)
        try:
            self._count()
            first, ahead = await self.redis.eval(
                CLAIM_PLACE, 2, seen, self.keys.pending(line), secrets.token_hex(8),
                self.limits.dedupe_ttl, place, pending_ttl,
            )  # fmt: skip
        except FAILURES as exc:
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
        except FAILURES as exc:
            self.health.failed(exc, "reading a conversation's pending messages")
            return "answered"  # fail open: wait for nothing
        if score is None:
            return "answered"
        return "pending" if alive else "orphaned"

    async def leave(self, line: ContextKey, place: str) -> None:
        try:
            self._count()
            await self.redis.zrem(self.keys.pending(line), place)
        except FAILURES as exc:
            self.health.failed(exc, "updating a conversation's pending messages")

    async def retake(
        self, line: ContextKey, namespace: str, delivery_id: str, order: str, *, force: bool = False
    ) -> RetakeState:
        """`RETAKE`, the owner's heartbeat, then `RESET`. Raises what Redis raises: a worker
        must not guess whether to answer."""
        seen, pending = self.keys.seen_in(line, namespace, delivery_id), self.keys.pending(line)
        self._count()
        found = _text(await self.redis.eval(RETAKE, 2, seen, pending, f"{order}:{delivery_id}:"))
        if found in ("new", "done"):
            return cast(RetakeState, found)
        owner = found.rpartition(":")[2]
        if not force and await self.redis.exists(self.keys.owner(owner)):
            return "busy"
        await self.redis.eval(RESET, 2, seen, pending, found)
        return "again"

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except FAILURES:
            return False
        return True

    def lock(
        self, key: ContextKey, *, lazy: bool = False
    ) -> AbstractAsyncContextManager[RedisTurnLock]:
        """One turn of a conversation at a time (`stores/redis/locking.py`). `lazy`: the Redis
        lock rides in the first `read_turn` given the handle and leaves in the `write_turn`
        given it."""
        return self.locks.hold(self.keys.lock(key), lazy=lazy)


def _or(result: Any, default: Any) -> Any:
    """A pipeline result, or `default` when that one command failed (logged, never fatal)."""
    if isinstance(result, Exception):
        log.warning("a Redis command failed: %s", type(result).__name__)
        return default
    return result


def _asked(slots: dict[str, int], results: list[Any], name: str) -> bool:
    """`name` was read and its command did not fail (a missing key reads as None)."""
    return name in slots and not isinstance(results[slots[name]], Exception)


def _conversation(raw_history: Any, meta: Any, chan: Any) -> Conversation:
    history = [turn for raw in raw_history or [] if (turn := decode_turn(raw)) is not None]
    settings = {_text(k): _text(v) for k, v in (meta or {}).items()}
    defaults = {_text(k): _text(v) for k, v in (chan or {}).items()}
    return Conversation(
        history=history,
        summary=settings.get("summary", ""),
        persona=settings.get("persona", ""),
        model=settings.get("model", ""),
        channel_persona=defaults.get("persona", ""),
        channel_model=defaults.get("model", ""),
        voice=settings.get("voice", "") == "on",
    )


def _rate(raw: Any) -> RateResult | None:
    """A TOKEN_BUCKET reply; None when it failed (the limit fails open)."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    return RateResult(bool(_int(raw[0])), _int(raw[1]))


def _answer(raw: Any) -> str | None:
    text = _text(raw) if isinstance(raw, str | bytes) else ""
    return text or None


def _totals(raw: dict[Any, Any]) -> Totals:
    values = {_text(k): _int(v) for k, v in raw.items()}
    return Totals(values.get("prompt", 0), values.get("completion", 0), values.get("images", 0))


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _redis_lock(lock: TurnLock | None) -> RedisTurnLock | None:
    if lock is not None and not isinstance(lock, RedisTurnLock):
        raise TypeError(f"not this store's lock: {type(lock).__name__}")
    return lock


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
