"""The store port: what the core reads and writes, as typed values.

A turn is one read and one write. `TurnReads` names everything the turn needs before it
decides (the conversation, the channel's defaults, a rate-limit take, today's usage, a cached
answer) and the journal entry that makes a crash recoverable; `TurnState` is what came back.
`TurnWrites` names everything the turn changes once answered (the turns, usage, the cache,
the journal entry's and the delivery claim's release). A store turns each into as few round
trips as it can: the Redis store sends one pipeline and one MULTI/EXEC; the memory store
(`stores/memory.py`) is the executable definition of what they mean.

The policies (`core/policies/`: limits, usage, cache) build these values and decide from the
typed results; no store reply reaches them.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from core.model import ContextKey, Conversation, Message, Turn
from core.protocols import Usage


def write_token() -> str:
    """A fresh token for a write that a resend must not repeat: a client may send a command
    again when its reply is late, though the first one ran."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class RateTake:
    """Take one message from a user's token bucket of `capacity`, refilled at `per_minute`."""

    platform: str
    user: str
    capacity: int
    per_minute: float
    token: str = field(default_factory=write_token)


@dataclass(frozen=True, slots=True)
class RateResult:
    """A take's outcome: allowed, or how long until it would be."""

    allowed: bool
    wait_ms: int = 0


@dataclass(frozen=True, slots=True)
class UserPeriod:
    """One user's usage counters in one period (`d2025-01-31`, `m2025-01`)."""

    platform: str
    user: str
    period: str


@dataclass(frozen=True, slots=True)
class Totals:
    """Usage in one period."""

    prompt: int = 0
    completion: int = 0
    images: int = 0  # pictures drawn (/image, generate_image)

    @property
    def total(self) -> int:
        return self.prompt + self.completion


DAY_TTL = 3 * 86400
MONTH_TTL = 70 * 86400


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Tokens to add to a user's day and month and to the conversation, once (`token`)."""

    platform: str
    user: str
    day: str
    month: str
    usage: Usage
    token: str = field(default_factory=write_token)
    images: int = 0  # pictures drawn
    day_ttl: int = DAY_TTL  # seconds the day's counters are kept
    month_ttl: int = MONTH_TTL  # the month's (`privacy.profile_ttl_days`)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """An answer to keep under `key` (a digest) for `ttl` seconds."""

    key: str
    answer: str
    ttl: int


@dataclass(frozen=True, slots=True)
class ImageBlob:
    """An image of a user turn, kept `ttl` seconds beside its conversation so follow-up
    questions can show it to the model again (the history holds only its id)."""

    id: str
    data: bytes
    ttl: int


@dataclass(frozen=True, slots=True)
class Place:
    """A message's place in its conversation's pending set (see `Deliveries`)."""

    line: ContextKey
    place: str


@dataclass(frozen=True, slots=True)
class Person:
    """One person on one platform: whose data an export or an erasure is about."""

    platform: str
    user: str


@dataclass(frozen=True, slots=True)
class PersonData:
    """What the store keeps about one person (`chatbot privacy export`)."""

    conversations: dict[str, list[Turn]]  # conversation id -> their turns and the answers
    settings: dict[str, dict[str, str]]  # their own conversations' persona and model
    usage: dict[str, Totals]  # period (`d2025-01-31`, `m2025-01`) -> their token usage
    approvals: list[str] = field(default_factory=list)  # their pending approvals' records


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erasure removed (`chatbot privacy erase`)."""

    conversations: int = 0  # their own conversations, deleted whole
    turns: int = 0  # their turns and the answers to them, from conversations shared with others
    usage: int = 0  # usage counters (per day, per month)
    cached: int = 0  # cached answers to their messages
    approvals: int = 0  # their pending approvals


@dataclass(frozen=True, slots=True)
class TurnReads:
    """What a turn reads before it decides, in one round trip."""

    conversation: ContextKey
    history: bool = True  # False: settings, history and summary are not needed (an intent)
    channel: ContextKey | None = None  # the message's own key: the channel's defaults
    journal: Message | None = None  # recorded as being answered (a crash is answered later)
    rate: RateTake | None = None
    budget: UserPeriod | None = None  # today's usage, for the daily budget
    cache: str | None = None  # a cache key to probe
    masks: bool = False  # the conversation's placeholders (`privacy.mask`)


@dataclass(frozen=True, slots=True)
class TurnState:
    """What a turn read. A part not asked for, or that the store could not read, is None:
    policies fail open."""

    conversation: Conversation = field(default_factory=Conversation)
    rate: RateResult | None = None
    used_today: int | None = None
    cached: str | None = None
    masks: Mapping[str, str] = field(default_factory=dict)  # value -> placeholder


@dataclass(frozen=True, slots=True)
class TurnWrites:
    """What a turn writes once answered, in one round trip (atomically where it can)."""

    conversation: ContextKey
    turns: tuple[Turn, ...] = ()
    answered: Message | None = None  # its journal entry leaves
    usage: UsageRecord | None = None
    cache: CacheEntry | None = None
    leave: Place | None = None  # the delivery claim leaves the pending set
    masks: tuple[tuple[str, str], ...] = ()  # new value -> placeholder pairs of this turn
    person: Person | None = None  # who spoke: the conversation (and a cache entry) is theirs
    own: bool = False  # the conversation is that person's alone (a DM, a per-user scope)
    images: tuple[ImageBlob, ...] = ()  # the turn's images, in the conversation's slot
    token: str = field(default_factory=write_token)


class TurnLock:
    """A store's hold on a conversation lock: opaque to the core, given back to `read_turn`
    and `write_turn` so that a lazily taken lock rides in their round trips."""


class Store(Protocol):
    """Conversation state. Every method is at most one round trip to the backend (a lock
    that is waited for, because another process holds it, adds its own)."""

    def lock(self, key: ContextKey, *, lazy: bool = False) -> AbstractAsyncContextManager[TurnLock]:
        """One turn at a time per conversation. `lazy`: taken by the first `read_turn` given
        the handle, released by the `write_turn` given it (two round trips fewer)."""
        ...

    async def read_turn(self, reads: TurnReads, *, lock: TurnLock | None = None) -> TurnState:
        """Everything `reads` names, in one round trip. A lock that another process holds is
        waited for, then the conversation is read again (a rate take counts once)."""
        ...

    async def write_turn(self, writes: TurnWrites, *, lock: TurnLock | None = None) -> bool:
        """Everything `writes` names, releasing a held `lock`; a resend changes nothing.
        Whether it landed (False: the backend failed; logged)."""
        ...

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation: ...

    async def cached(self, key: str) -> str | None:
        """A cached answer, else None (also when the backend is away)."""
        ...

    async def remember(self, entry: CacheEntry) -> None:
        """Keep an answer under `entry.key` for `entry.ttl` seconds, outside any turn (what
        `cached` reads back: the web channel's answers to retried requests)."""
        ...

    async def forget(self, key: ContextKey, message: Message) -> None:
        """Drop `message`'s journal entry on a path that writes nothing else (a refusal)."""
        ...

    async def usage(self, periods: Sequence[UserPeriod]) -> list[Totals]: ...

    async def images(self, key: ContextKey, ids: Sequence[str]) -> dict[str, bytes]:
        """The kept images of a conversation by id (one round trip); an expired one is
        missing, and a store that cannot read gives what it has."""
        ...

    async def reset(self, key: ContextKey) -> None: ...

    async def person(self, person: Person) -> PersonData:
        """Everything kept about `person`: their turns and the answers to them, the settings
        of their own conversations, their usage."""
        ...

    async def erase(self, person: Person) -> Erased:
        """Delete what `person` left: their own conversations whole; from a conversation
        shared with others, their turns and the answers to them; their usage counters and
        the cached answers to their messages. Nobody else's data."""
        ...

    async def hold_approval(self, approval_id: str, person: Person, record: str, ttl: int) -> None:
        """Keep a pending approval (`record`, opaque to the store) `ttl` seconds, indexed
        under the person who asked (export, erasure)."""
        ...

    async def approval(self, approval_id: str) -> str | None:
        """A pending approval's record, left in place (None: decided or expired)."""
        ...

    async def take_approval(self, approval_id: str) -> str | None:
        """The record, removed in the same step: of two presses (on two replicas) exactly
        one gets it."""
        ...

    async def set_setting(self, key: ContextKey, name: str, value: str) -> None: ...

    async def set_channel_setting(self, channel: ContextKey, name: str, value: str) -> None: ...

    async def apply_summary(
        self, key: ContextKey, summary: str, folded: Sequence[Turn], usage: Usage
    ) -> bool:
        """Replace the summary and drop `folded` from the history's head, atomically, only if
        the history still starts with them. The summary call's usage is recorded always."""
        ...


class Deduper(Protocol):
    """Remembers delivery ids so a redelivered event is handled once, across processes."""

    async def first_seen(self, namespace: str, delivery_id: str) -> bool: ...


PlaceState = Literal["answered", "pending", "orphaned"]
"""Another process's place: gone from the pending set; still there and its process alive;
still there and its process dead (its heartbeat expired)."""


RetakeState = Literal["new", "again", "done", "busy"]


@runtime_checkable
class Deliveries(Deduper, Protocol):
    """The dedupe, and each conversation's pending messages in the platform's order, so
    replicas that each got some of a conversation's messages answer them in that order.

    A place is `order:delivery_id:owner`: `order` sorts as the platform orders messages
    (zero-padded Telegram update_id, Slack ts, Discord snowflake), `owner` is the claiming
    process's heartbeat id. A turn's claim leaves in its write (`TurnWrites.leave`)."""

    async def claim(
        self, line: ContextKey, namespace: str, delivery_id: str, place: str
    ) -> tuple[bool, str]:
        """(first seen, the place still pending just before this one, or "")."""
        ...

    async def pending(self, line: ContextKey, place: str) -> PlaceState:
        """Whether `place` is still waiting or being answered, and by a live process."""
        ...

    async def leave(self, line: ContextKey, place: str) -> None:
        """`place` is answered (or dropped): later places need not wait for it."""
        ...


@runtime_checkable
class Retakes(Deliveries, Protocol):
    """Deliveries a worker takes over from another (`chatbot run --role worker`)."""

    async def retake(
        self, line: ContextKey, namespace: str, delivery_id: str, order: str, *, force: bool = False
    ) -> RetakeState:
        """A delivery another process read and may not have answered (a worker that died or
        lost its partition): 'new' never claimed; 'done' its turn is recorded; 'busy' claimed
        by a process that still lives (it may be answering it: ask again later); 'again'
        claimed by a process that is gone (or `force`), now reset so it is claimed anew."""
        ...


class AnswerJournal(Protocol):
    """The messages being answered, kept so that a crash loses none: an entry rides in the
    turn's read (`TurnReads.journal`) and leaves in its write (`TurnWrites.answered`); each
    process keeps a heartbeat, and another process answers what a dead one left."""

    owner: str  # this process's heartbeat id

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        """Take the entries of dead processes on `platforms`; each goes to one claimant."""
        ...


class StateStore(Store, Retakes, Protocol):
    """A whole store as the application runs on it: the port, the dedupe and pending
    messages, the journal, and a liveness check for `/readyz`."""

    @property
    def journal(self) -> AnswerJournal: ...

    @property
    def where(self) -> str:
        """Where the state is, for logs and errors (never a password)."""
        ...

    async def ping(self) -> bool: ...
