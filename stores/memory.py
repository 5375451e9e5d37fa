"""The store port (`core/storage.py`) in plain Python: the executable definition of what the
Redis store's reads, writes and Lua scripts (`stores/redis/scripts.py`) mean.

A `MemoryBackend` plays one Redis server: every key that Redis keeps is a field here, with an
expiry read from an injectable clock, so tests move time instead of sleeping. A
`MemoryStore` plays one bot process on it: two stores on one backend are two processes on
one Redis, which is how contract tests model a second replica, a dead lock holder
(`MemoryStore.crash`) and a dead journal owner. Each backend operation runs without an
await, so it is as atomic as a Lua script or a MULTI/EXEC; nothing here ever fails, so no
part of a `TurnState` is None for an outage. Used by unit tests and `chatbot chat --memory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from core.model import ContextKey, Conversation, Image, Message, Turn
from core.protocols import Usage
from core.storage import (
    CacheEntry,
    Erased,
    Person,
    PersonData,
    PlaceState,
    RateResult,
    RateTake,
    RetakeState,
    Totals,
    TurnLock,
    TurnReads,
    TurnState,
    TurnWrites,
    UserPeriod,
)
from stores.limits import StoreLimits
from stores.people import theirs as _theirs

if TYPE_CHECKING:
    from core.storage import AnswerJournal, Deliveries, Store

log = logging.getLogger(__name__)

SETTINGS_FIELDS = ("summary", "persona", "model", "voice")
CHANNEL_FIELDS = ("persona", "model")
POLL = 0.005  # seconds between looks at a lock another store holds (it may expire meanwhile)
REMEMBERED = 16  # write tokens a counter or bucket keeps, as the scripts' `written`/`taken`
DEFAULT_LIMITS = StoreLimits()  # frozen: one shared default is safe


def _tokens() -> deque[str]:
    return deque(maxlen=REMEMBERED)


@dataclass(slots=True, kw_only=True)
class Kept:
    """A value kept under one Redis key, gone once the backend's clock passes `expires`."""

    expires: float = math.inf


@dataclass(slots=True)
class History(Kept):
    turns: list[Turn] = field(default_factory=list)


@dataclass(slots=True)
class Channel(Kept):
    """A channel's defaults (persona, model)."""

    settings: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Masks(Kept):
    """A conversation's masked values -> placeholders (the `masks` hash)."""

    values: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Meta(Kept):
    """Settings (summary, persona, model) and the last append's token (WRITE_TURN's `written`)."""

    settings: dict[str, str] = field(default_factory=dict)
    written: str = ""


@dataclass(slots=True)
class Counters(Kept):
    prompt: int = 0
    completion: int = 0
    images: int = 0
    written: deque[str] = field(default_factory=_tokens)  # RECORD's resend guard

    def add(self, usage: Usage, ttl: float, now: float, images: int = 0) -> None:
        self.prompt += usage.prompt_tokens
        self.completion += usage.completion_tokens
        self.images += images
        self.expires = now + ttl

    def totals(self) -> Totals:
        return Totals(self.prompt, self.completion, self.images)


@dataclass(slots=True)
class Blob(Kept):
    """An image of a user turn (`{conv}:image:{id}`)."""

    data: bytes = b""


@dataclass(slots=True)
class Bucket(Kept):
    tokens: float = 0.0
    ts: int = 0  # ms on the backend's clock
    taken: deque[str] = field(default_factory=_tokens)


@dataclass(slots=True)
class Text(Kept):
    """A string key: a cached answer, a seen delivery, a lock's token."""

    value: str = ""


@dataclass(slots=True)
class Pending(Kept):
    """A conversation's pending places: a sorted set whose scores are all 0 (lexical order)."""

    places: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    owner: str
    since: float
    message: Message


K = TypeVar("K")
V = TypeVar("V", bound=Kept)


class MemoryBackend:
    """The shared state of the stores on it (one Redis server). Keys as Redis names them,
    minus the prefix: conversations by `ContextKey.id`, users by (platform, user)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.history: dict[str, History] = {}
        self.meta: dict[str, Meta] = {}
        self.conversation_usage: dict[str, Counters] = {}
        self.channels: dict[tuple[str, str, str], Channel] = {}
        self.user_usage: dict[tuple[str, str, str], Counters] = {}  # platform, user, period
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.cache: dict[str, Text] = {}
        self.masks: dict[str, Masks] = {}
        self.images: dict[tuple[str, str], Blob] = {}  # (conversation, image id)
        self.approvals: dict[str, Text] = {}  # id -> record
        self.person_approvals: dict[tuple[str, str], set[str]] = {}  # (platform, user) -> ids
        # a person's conversations and cache keys (platform, user) -> ids (export, erasure)
        self.people: dict[tuple[str, str], tuple[dict[str, bool], set[str]]] = {}  # own?
        self.seen: dict[tuple[str, ...], Text] = {}  # (ns, id) or (conversation, ns, id)
        self.pending: dict[str, Pending] = {}
        self.locks: dict[str, Text] = {}
        self.journals: dict[str, dict[str, JournalEntry]] = {}
        self.owners: set[str] = set()  # every journal that started (recovery looks here)
        self.heartbeats: dict[str, float] = {}  # owner -> expiry

    def live(self, table: dict[K, V], key: K) -> V | None:
        """The value under `key`, dropping it once expired (Redis: expired when now > TTL)."""
        value = table.get(key)
        if value is not None and self.clock() > value.expires:
            del table[key]
            return None
        return value

    def alive(self, owner: str) -> bool:
        expires = self.heartbeats.get(owner)
        return expires is not None and self.clock() <= expires

    def take_lock(self, name: str, token: str, ttl: float) -> bool:
        """`TAKE`: a free (or expired) lock, or ours again, is ours for `ttl` seconds."""
        held = self.live(self.locks, name)
        if held is not None and held.value != token:
            return False
        self.locks[name] = Text(value=token, expires=self.clock() + ttl)
        return True

    def extend_lock(self, name: str, token: str, ttl: float) -> None:
        """redis-py's `Lock.extend`: only while it still holds this token (never re-takes)."""
        held = self.live(self.locks, name)
        if held is not None and held.value == token:
            held.expires = self.clock() + ttl

    def release_lock(self, name: str, token: str) -> None:
        """`RELEASE`: only while it still holds this token (it may have expired and moved)."""
        held = self.live(self.locks, name)
        if held is not None and held.value == token:
            del self.locks[name]

    def plant_lock(self, key: ContextKey, ttl: float, token: str = "dead") -> None:
        """A lock held by a process that will never release it (tests)."""
        self.locks[key.id] = Text(value=token, expires=self.clock() + ttl)


def _stored(turn: Turn) -> Turn:
    """A turn as the history keeps it (`encode_turn`: role, content, name, the speaker's id,
    the ids of its images; no tool calls)."""
    images = tuple(Image(i.id, i.mime_type) for i in turn.images)
    return Turn(turn.role, turn.content, turn.name, user=turn.user, images=images)


def _lua_number(value: float) -> float:
    """A number as Lua's `tostring` keeps it in a hash (14 significant digits)."""
    return float(f"{value:.14g}")


def entry_id(message: Message) -> str:
    """The journal entry's id, as `RedisJournal.entry_id`."""
    return f"{message.platform}:{message.key.channel}:{message.message_id}"


def _channel(key: ContextKey) -> tuple[str, str, str]:
    return (key.platform, key.workspace, key.channel)  # `KeyBuilder.channel`'s parts


@dataclass(slots=True, eq=False)
class MemoryTurnLock(TurnLock):
    """One turn's hold: pending (lazy, not taken yet) -> held -> released; or unlocked (the
    wait ran out: the turn goes on under the store's own lock alone, as on Redis)."""

    name: str
    token: str
    state: Literal["pending", "held", "unlocked", "released"] = "pending"
    timer: asyncio.TimerHandle | None = None


class MemoryJournal:
    """The `AnswerJournal` on a backend. The heartbeat is set at `start` with no expiry and
    dropped at `stop` (or `crash`): a process that runs is alive, so no task refreshes it and
    a fake clock never kills a live owner. `heartbeat_ttl` is kept for the Redis signature."""

    def __init__(self, backend: MemoryBackend, *, heartbeat_ttl: float = 15.0) -> None:
        self.backend = backend
        self.owner = secrets.token_hex(8)
        self.heartbeat_ttl = heartbeat_ttl

    async def start(self) -> None:
        self.backend.owners.add(self.owner)
        self.backend.heartbeats[self.owner] = math.inf

    async def stop(self) -> None:
        self.backend.heartbeats.pop(self.owner, None)

    def begin(self, key: ContextKey, message: Message) -> None:
        # What the JSON round trip keeps: a recovered message is not a redelivery.
        kept = dataclasses.replace(message, delivery_id="", order="", follow_up=False)
        entry = JournalEntry(self.owner, self.backend.clock(), kept)
        self.backend.journals.setdefault(key.id, {})[entry_id(message)] = entry

    def end(self, key: ContextKey, message: Message) -> None:
        entries = self.backend.journals.get(key.id, {})
        entries.pop(entry_id(message), None)
        if not entries:
            self.backend.journals.pop(key.id, None)

    async def claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        """Take the entries on `platforms` of started owners whose heartbeat is gone; each
        leaves the backend as it is taken, so one claimant gets it (`JOURNAL_CLAIM`)."""
        backend = self.backend
        dead = {o for o in backend.owners - {self.owner} if not backend.alive(o)}
        claimed: list[Message] = []
        for conversation, entries in list(backend.journals.items()):
            for name, entry in list(entries.items()):
                if entry.owner in dead and name.split(":", 1)[0] in platforms:
                    claimed.append(entries.pop(name).message)
            if not entries:
                del backend.journals[conversation]
        left = {e.owner for entries in backend.journals.values() for e in entries.values()}
        backend.owners -= dead - left  # an owner with nothing left is forgotten
        return claimed


class MemoryStore:
    """The `Store` and `Deliveries` of one process on a `MemoryBackend`, with its journal."""

    def __init__(
        self,
        backend: MemoryBackend | None = None,
        limits: StoreLimits = DEFAULT_LIMITS,
        *,
        heartbeat_ttl: float = 15.0,
    ) -> None:
        self.backend = backend if backend is not None else MemoryBackend()
        self.limits = limits
        self.journal = MemoryJournal(self.backend, heartbeat_ttl=heartbeat_ttl)
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}
        self._holding: set[MemoryTurnLock] = set()

    # -- the turn ---------------------------------------------------------------------------

    async def read_turn(self, reads: TurnReads, *, lock: TurnLock | None = None) -> TurnState:
        """As the Redis store's one pipeline: the journal entry, the rate-limit take, today's
        usage and the cache probe at one instant, with a lazy `lock`'s take; when another
        store holds the lock, the turn waits for it and only the conversation is read again
        (after that turn)."""
        held = _memory_lock(lock)
        key, b = reads.conversation, self.backend
        if reads.journal is not None:
            self.journal.begin(key, reads.journal)
        used = None
        if reads.budget is not None:
            d = reads.budget
            counters = b.live(b.user_usage, (d.platform, d.user, d.period))
            used = counters.prompt + counters.completion if counters else 0
        rate = self._take(reads.rate) if reads.rate is not None else None
        cached = await self.cached(reads.cache) if reads.cache else None
        if held is not None and held.state == "pending":
            await self._acquire(held)
        conversation = self._conversation(key, reads.channel) if reads.history else None
        masks = b.live(b.masks, key.id) if reads.masks else None
        return TurnState(
            conversation=conversation or Conversation(),
            rate=rate,
            used_today=used,
            cached=cached,
            masks=dict(masks.values) if masks else {},
        )

    def _conversation(self, key: ContextKey, channel: ContextKey | None) -> Conversation:
        b = self.backend
        history = b.live(b.history, key.id)
        meta = b.live(b.meta, key.id)
        settings = meta.settings if meta else {}
        found = b.live(b.channels, _channel(channel or key))
        defaults = found.settings if found else {}
        return Conversation(
            history=list(history.turns) if history else [],
            summary=settings.get("summary", ""),
            persona=settings.get("persona", ""),
            model=settings.get("model", ""),
            channel_persona=defaults.get("persona", ""),
            channel_model=defaults.get("model", ""),
            voice=settings.get("voice", "") == "on",
        )

    def _take(self, take: RateTake) -> RateResult:
        """`TOKEN_BUCKET` with cost 1: refill `per_minute / 60000` a ms up to `capacity`."""
        b = self.backend
        bucket = b.live(b.buckets, (take.platform, take.user))
        if bucket is not None and take.token in bucket.taken:
            return RateResult(True, 0)  # this take landed already
        now = math.floor(b.clock() * 1000)
        rate = take.per_minute / 60_000
        if bucket is None:
            bucket = b.buckets[(take.platform, take.user)] = Bucket(tokens=take.capacity, ts=now)
        tokens = min(take.capacity, bucket.tokens + max(0, now - bucket.ts) * rate)
        allowed, wait = tokens >= 1, 0
        if allowed:
            tokens -= 1
            bucket.taken.appendleft(take.token)
        else:
            wait = math.ceil((1 - tokens) / rate)
        bucket.tokens, bucket.ts = _lua_number(tokens), now
        bucket.expires = b.clock() + (math.ceil(take.capacity / rate) + 1000) / 1000
        return RateResult(allowed, wait)

    async def write_turn(self, writes: TurnWrites, *, lock: TurnLock | None = None) -> bool:
        """Everything `writes` names at one instant, releasing a held `lock`; the same
        `writes.token` (and `UsageRecord.token`) again changes nothing. Always True."""
        held = _memory_lock(lock)
        if held is not None and held.state == "pending":
            await self._acquire(held)  # nothing was read under it: take it before writing
        key, b, now = writes.conversation, self.backend, self.backend.clock()
        ttl = self.limits.ttl_seconds
        if writes.turns:
            meta = b.live(b.meta, key.id) or Meta()
            if meta.written != writes.token:  # WRITE_TURN: the last append's token
                history = b.history[key.id] = b.live(b.history, key.id) or History()
                history.turns.extend(map(_stored, writes.turns))
                del history.turns[: -self.limits.max_turns]
                meta.written, history.expires, meta.expires = writes.token, now + ttl, now + ttl
                b.meta[key.id] = meta
        if (record := writes.usage) is not None:  # RECORD, twice
            chat = b.conversation_usage[key.id] = b.live(b.conversation_usage, key.id) or Counters()
            if _once(chat, record.token):
                chat.add(record.usage, ttl, now)
            user = (record.platform, record.user)
            periods = (
                ((*user, record.day), record.day_ttl),
                ((*user, record.month), record.month_ttl),
            )
            kept = [b.live(b.user_usage, name) or Counters() for name, _ in periods]
            if _once(kept[1], record.token):  # the last key keeps the tokens
                for (name, period_ttl), counters in zip(periods, kept, strict=True):
                    b.user_usage[name] = counters
                    counters.add(record.usage, period_ttl, now, record.images)
        if writes.cache is not None:
            c = writes.cache
            b.cache[c.key] = Text(value=c.answer, expires=now + c.ttl)
        for image in writes.images:
            b.images[(key.id, image.id)] = Blob(data=image.data, expires=now + image.ttl)
        if writes.masks:
            masks = b.masks[key.id] = b.live(b.masks, key.id) or Masks()
            masks.values.update(writes.masks)
            masks.expires = now + self.limits.ttl_seconds
        if writes.person is not None and writes.turns:
            conversations, cached = b.people.setdefault(
                (writes.person.platform, writes.person.user), ({}, set())
            )
            conversations[key.id] = writes.own
            if writes.cache is not None:
                cached.add(writes.cache.key)
        if writes.answered is not None:
            self.journal.end(key, writes.answered)
        if writes.leave is not None:
            await self.leave(writes.leave.line, writes.leave.place)
        if held is not None and held.state == "held":
            self._release(held)
        return True

    # -- the rest of the Store --------------------------------------------------------------

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation:
        return (await self.read_turn(TurnReads(key, channel=channel))).conversation

    async def cached(self, key: str) -> str | None:
        entry = self.backend.live(self.backend.cache, key)
        return entry.value if entry is not None and entry.value else None

    async def remember(self, entry: CacheEntry) -> None:
        self.backend.cache[entry.key] = Text(
            value=entry.answer, expires=self.backend.clock() + entry.ttl
        )

    async def forget(self, key: ContextKey, message: Message) -> None:
        self.journal.end(key, message)

    async def usage(self, periods: Sequence[UserPeriod]) -> list[Totals]:
        b = self.backend
        found = [b.live(b.user_usage, (p.platform, p.user, p.period)) for p in periods]
        return [c.totals() if c else Totals() for c in found]

    async def images(self, key: ContextKey, ids: Sequence[str]) -> dict[str, bytes]:
        b = self.backend
        found = {i: b.live(b.images, (key.id, i)) for i in ids}
        return {i: blob.data for i, blob in found.items() if blob is not None}

    async def person(self, person: Person) -> PersonData:
        b = self.backend
        conversations_of, _ = b.people.get((person.platform, person.user), ({}, set()))
        conversations: dict[str, list[Turn]] = {}
        settings: dict[str, dict[str, str]] = {}
        for conversation in sorted(conversations_of):
            history = b.live(b.history, conversation)
            theirs = _theirs(history.turns if history else [], person.user)
            if theirs:
                conversations[conversation] = theirs
            meta = b.live(b.meta, conversation)
            if conversations_of[conversation] and meta is not None and meta.settings:
                settings[conversation] = dict(meta.settings)
        usage = {
            period: counters.totals()
            for (platform, user, period), counters in list(b.user_usage.items())
            if (platform, user) == (person.platform, person.user)
            and b.live(b.user_usage, (platform, user, period)) is not None
        }
        ids = b.person_approvals.get((person.platform, person.user), set())
        approvals = [kept.value for i in sorted(ids) if (kept := b.live(b.approvals, i))]
        return PersonData(conversations, settings, usage, approvals)

    async def erase(self, person: Person) -> Erased:
        b = self.backend
        who = (person.platform, person.user)
        conversations_of, cached = b.people.pop(who, ({}, set()))
        owned = turns = 0
        for conversation, own in conversations_of.items():
            if (history := b.live(b.history, conversation)) is not None:
                for turn in history.turns if own else _theirs(history.turns, person.user):
                    for image in turn.images:
                        b.images.pop((conversation, image.id), None)
            if own:
                for table in (b.history, b.meta, b.conversation_usage, b.masks):
                    table.pop(conversation, None)
                owned += 1
            elif (history := b.live(b.history, conversation)) is not None:
                theirs = _theirs(history.turns, person.user)
                turns += len(theirs)
                gone = {id(turn) for turn in theirs}
                history.turns = [turn for turn in history.turns if id(turn) not in gone]
        for key in cached:
            b.cache.pop(key, None)
        periods = [name for name in b.user_usage if name[:2] == who]
        for name in periods:
            del b.user_usage[name]
        b.buckets.pop(who, None)
        ids = b.person_approvals.pop(who, set())
        approvals = 0
        for approval_id in ids:
            if b.live(b.approvals, approval_id) is not None:
                del b.approvals[approval_id]
                approvals += 1
        return Erased(owned, turns, len(periods), len(cached), approvals)

    async def hold_approval(self, approval_id: str, person: Person, record: str, ttl: int) -> None:
        b = self.backend
        b.approvals[approval_id] = Text(value=record, expires=b.clock() + ttl)
        b.person_approvals.setdefault((person.platform, person.user), set()).add(approval_id)

    async def approval(self, approval_id: str) -> str | None:
        kept = self.backend.live(self.backend.approvals, approval_id)
        return kept.value if kept else None

    async def take_approval(self, approval_id: str) -> str | None:
        b = self.backend
        kept = b.live(b.approvals, approval_id)
        b.approvals.pop(approval_id, None)
        return kept.value if kept else None

    async def reset(self, key: ContextKey) -> None:
        """Drop the history and the summary; persona and model stay (and the meta's TTL)."""
        b = self.backend
        b.history.pop(key.id, None)
        b.masks.pop(key.id, None)
        if (meta := b.live(b.meta, key.id)) is not None:
            meta.settings.pop("summary", None)

    async def set_setting(self, key: ContextKey, name: str, value: str) -> None:
        if name not in SETTINGS_FIELDS:
            raise ValueError(f"unknown conversation setting {name!r}")
        b = self.backend
        meta = b.meta[key.id] = b.live(b.meta, key.id) or Meta()
        _set(meta.settings, name, value)
        meta.expires = b.clock() + self.limits.ttl_seconds

    async def set_channel_setting(self, channel: ContextKey, name: str, value: str) -> None:
        if name not in CHANNEL_FIELDS:
            raise ValueError(f"unknown channel setting {name!r}")
        b = self.backend
        kept = b.channels[_channel(channel)] = b.live(b.channels, _channel(channel)) or Channel()
        _set(kept.settings, name, value)
        kept.expires = b.clock() + self.limits.profile_ttl

    async def apply_summary(
        self, key: ContextKey, summary: str, folded: Sequence[Turn], usage: Usage
    ) -> bool:
        """`APPLY_SUMMARY`: the usage always; the summary and the trim only if the history
        still starts with `folded`. The history's TTL is left as it is, as the script does."""
        b, now, ttl = self.backend, self.backend.clock(), self.limits.ttl_seconds
        if usage.total > 0:
            chat = b.conversation_usage[key.id] = b.live(b.conversation_usage, key.id) or Counters()
            chat.add(usage, ttl, now)
        history = b.live(b.history, key.id)
        turns = history.turns if history else []
        head = turns[: len(folded)] if folded else turns  # LRANGE 0 -1 is the whole list
        if head != [_stored(t) for t in folded]:
            return False
        if history is not None:
            del history.turns[: len(folded)]
        meta = b.meta[key.id] = b.live(b.meta, key.id) or Meta()
        meta.settings["summary"], meta.expires = summary, now + ttl
        return True

    # -- Deliveries -------------------------------------------------------------------------

    def _first(self, seen: tuple[str, ...]) -> bool:
        b = self.backend
        if b.live(b.seen, seen) is not None:
            return False
        b.seen[seen] = Text(value="1", expires=b.clock() + self.limits.dedupe_ttl)
        return True

    async def first_seen(self, namespace: str, delivery_id: str) -> bool:
        return self._first((namespace, delivery_id))

    async def claim(
        self, line: ContextKey, namespace: str, delivery_id: str, place: str
    ) -> tuple[bool, str]:
        """`CLAIM_PLACE`: seen in the conversation (not where `first_seen` looks, as on Redis),
        the place added, the set kept `lock_wait` past its last claim; the place just before."""
        if not self._first((line.id, namespace, delivery_id)):
            return False, ""
        b = self.backend
        pending = b.pending[line.id] = b.live(b.pending, line.id) or Pending()
        pending.places.add(place)
        pending.expires = b.clock() + (self.limits.pending_ttl or self.limits.lock_wait)
        return True, max((p for p in pending.places if p < place), default="")

    async def pending(self, line: ContextKey, place: str) -> PlaceState:
        found = self.backend.live(self.backend.pending, line.id)
        if found is None or place not in found.places:
            return "answered"
        return "pending" if self.backend.alive(place.rpartition(":")[2]) else "orphaned"

    async def leave(self, line: ContextKey, place: str) -> None:
        found = self.backend.live(self.backend.pending, line.id)
        if found is not None:
            found.places.discard(place)
            if not found.places:  # an empty sorted set is no key (a new claim starts its TTL)
                del self.backend.pending[line.id]

    async def retake(
        self, line: ContextKey, namespace: str, delivery_id: str, order: str, *, force: bool = False
    ) -> RetakeState:
        """`RETAKE`: by the seen key, a place of this delivery and its owner's heartbeat."""
        b, seen = self.backend, (line.id, namespace, delivery_id)
        if b.live(b.seen, seen) is None:
            return "new"
        found = b.live(b.pending, line.id)
        ours = [p for p in found.places if p.startswith(f"{order}:{delivery_id}:")] if found else []
        if not ours:
            return "done"
        if not force and b.alive(ours[0].rpartition(":")[2]):
            return "busy"
        for place in ours:
            await self.leave(line, place)
        del b.seen[seen]
        return "again"

    # -- locks --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, key: ContextKey, *, lazy: bool = False) -> AsyncIterator[MemoryTurnLock]:
        """One holder per conversation: FIFO within this store (an asyncio.Lock per key),
        across stores the backend's lock, expiring `lock_ttl` after its last extension.
        `lazy`: the backend lock is taken by the first `read_turn` or `write_turn` given the
        handle (or never, if neither is) and released by the `write_turn`."""
        local, users = self._local.get(key.id, (asyncio.Lock(), 0))
        self._local[key.id] = (local, users + 1)
        try:
            async with local:
                held = MemoryTurnLock(key.id, secrets.token_hex(16))
                try:
                    if not lazy:
                        await self._acquire(held)
                    yield held
                finally:
                    if held.state == "held":
                        self._release(held)
                    held.state = "released"
        finally:
            local, users = self._local[key.id]
            if users <= 1:
                del self._local[key.id]
            else:
                self._local[key.id] = (local, users - 1)

    async def _acquire(self, held: MemoryTurnLock) -> None:
        """Take the backend lock, polling while another store holds it (it may release it or
        expire) for at most `lock_wait` on the backend's clock; then go on unlocked."""
        b, ttl = self.backend, self.limits.lock_ttl
        deadline = b.clock() + self.limits.lock_wait
        while not b.take_lock(held.name, held.token, ttl):
            if b.clock() >= deadline:
                log.warning(
                    "conversation lock %s not free after %ss", held.name, self.limits.lock_wait
                )
                held.state = "unlocked"
                return
            await asyncio.sleep(POLL)
        held.state = "held"
        self._holding.add(held)
        self._extend_later(held)

    def _extend_later(self, held: MemoryTurnLock) -> None:
        """Extend the lock every third of its TTL while the turn runs (as the Redis store)."""

        def extend() -> None:
            if held.state == "held":
                self.backend.extend_lock(held.name, held.token, self.limits.lock_ttl)
                self._extend_later(held)

        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(self.limits.lock_ttl / 3, extend)

    def _release(self, held: MemoryTurnLock) -> None:
        if held.timer is not None:
            held.timer.cancel()
        self.backend.release_lock(held.name, held.token)
        self._holding.discard(held)
        held.state = "released"

    @property
    def where(self) -> str:
        return "memory (this process only)"

    async def ping(self) -> bool:
        return True  # in this process: always there

    def crash(self) -> None:
        """Die as a killed process: the heartbeat goes, held locks are neither extended nor
        released (another store takes them after `lock_ttl`), journal entries stay."""
        self.backend.heartbeats.pop(self.journal.owner, None)
        for held in self._holding:
            if held.timer is not None:
                held.timer.cancel()
            held.state = "released"  # this process will not release it: it is dead
        self._holding.clear()


def _once(counters: Counters, token: str) -> bool:
    """RECORD's resend guard: False when `token` was added already."""
    if token in counters.written:
        return False
    counters.written.appendleft(token)
    return True


def _set(fields: dict[str, str], name: str, value: str) -> None:
    """HSET, or HDEL for an empty value."""
    if value:
        fields[name] = value
    else:
        fields.pop(name, None)


def _memory_lock(lock: TurnLock | None) -> MemoryTurnLock | None:
    if lock is not None and not isinstance(lock, MemoryTurnLock):
        raise TypeError(f"not this store's lock: {type(lock).__name__}")
    return lock


if TYPE_CHECKING:  # the ports, checked by mypy

    def _conforms(store: MemoryStore) -> tuple[Store, Deliveries, AnswerJournal]:
        return store, store, store.journal
