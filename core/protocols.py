"""The contracts between the core, the adapters and the stores.

As in ASGI, the whole core is one callable: a `Handler` takes a `Message` and a `Responder`.
The router is a Handler, the chat turn is a Handler, and middlewares wrap Handlers.
Interfaces are Protocols so test fakes need no inheritance.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from core.model import ContextKey, Conversation, Message, MessageRef, ToolCall, Turn


@runtime_checkable
class Responder(Protocol):
    """How the core talks back on one platform, for one incoming message.

    Adapters implement it. Text is Markdown as the model wrote it; the adapter converts it
    to its platform's markup. `final=False` marks an in-progress streaming state (the adapter
    may add a marker or skip markup); `final=True` is the exact, complete text of that part.
    """

    limit: int  # what the platform allows per message, as `measure` counts
    edit_interval: float  # seconds between two edits of one message
    typing_interval: float  # seconds between two typing signals (0: signal once)

    def measure(self, text: str) -> int:
        """What the platform counts against `limit` for this Markdown once rendered (Telegram:
        UTF-16 units after entity parsing; Slack: characters as shown; Discord: characters),
        so the core cuts parts that fit as sent, not as written."""
        ...

    async def send(self, text: str, *, final: bool) -> MessageRef: ...

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None: ...

    async def typing(self) -> None: ...

    async def delete(self, ref: MessageRef) -> None:
        """Remove a message the bot sent: a partial answer left behind once its final text
        had to be posted anew. Best effort: callers ignore failures."""
        ...


Handler = Callable[[Message, Responder], Awaitable[None]]
"""The core contract: handle one message, answering through the responder."""


Queue = Callable[[Any], object]
"""Queues exactly one command on a store pipeline, so a feature (rate limit, usage, cache)
rides in a round trip the turn makes anyway instead of adding its own."""


TurnLock = Any
"""A store's handle on a held conversation lock (opaque to callers): given back to
`load_turn`, `read` and `save` so a lazily taken lock rides in their round trips."""


class Store(Protocol):
    """Conversation state. Every method is at most one round trip to the backend (a lock
    that is waited for, because another process holds it, adds its own)."""

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation: ...

    async def load_turn(
        self,
        key: ContextKey,
        *,
        channel: ContextKey | None = None,
        extra: Sequence[Queue] = (),
        lock: TurnLock | None = None,
    ) -> tuple[Conversation, list[Any]]: ...

    async def read(self, extra: Sequence[Queue], *, lock: TurnLock | None = None) -> list[Any]: ...

    async def save(
        self,
        key: ContextKey,
        *turns: Turn,
        trim_to: int = 0,
        extra: Sequence[Queue] = (),
        lock: TurnLock | None = None,
    ) -> bool:
        """Whether the write landed (False: the backend failed; logged)."""
        ...

    async def reset(self, key: ContextKey) -> None: ...

    async def set_setting(self, key: ContextKey, name: str, value: str) -> None: ...

    async def set_channel_setting(self, channel: ContextKey, name: str, value: str) -> None: ...

    async def apply_summary(
        self, key: ContextKey, summary: str, folded: Sequence[Turn], usage: Usage
    ) -> bool: ...

    def lock(self, key: ContextKey, *, lazy: bool = False) -> AbstractAsyncContextManager[TurnLock]:
        """One turn at a time per conversation. `lazy`: taken by the first `load_turn` or
        `read` given the handle, released by the `save` given it (two round trips fewer)."""
        ...


class AnswerJournal(Protocol):
    """The messages being answered, kept so that a crash loses none: an entry rides in the
    turn's read and leaves in its write (the store's journal, e.g. `stores/redis/journal.py`),
    and another process answers what a dead one left."""

    def begin(self, message: Message) -> Queue: ...

    def end(self, message: Message) -> Queue: ...


class Deduper(Protocol):
    """Remembers delivery ids so a redelivered event is handled once, across processes."""

    async def first_seen(self, namespace: str, delivery_id: str) -> bool: ...


PlaceState = Literal["answered", "pending", "orphaned"]
"""Another process's place: gone from the pending set; still there and its process alive;
still there and its process dead (its heartbeat expired)."""


@runtime_checkable
class Deliveries(Deduper, Protocol):
    """The dedupe, and each conversation's pending messages in the platform's order, so
    replicas that each got some of a conversation's messages answer them in that order.

    A place is `order:delivery_id:owner`: `order` sorts as the platform orders messages
    (zero-padded Telegram update_id, Slack ts, Discord snowflake), `owner` is the claiming
    process's heartbeat id."""

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

    def queue_leave(self, line: ContextKey, place: str) -> Queue:
        """`leave`, riding in a turn's write instead of a round trip of its own."""
        ...


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts the API reported for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


LLMEvent = str | ToolCall | Usage
"""What a stream yields: text deltas as they come, the API's usage, then the assembled tool
calls (after the last chunk, when the model asked for tools)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


ToolSpec = Mapping[str, Any]
"""A tool as the Chat Completions API describes it: `{"type": "function", "function": {...}}`."""


class LLM(Protocol):
    """A chat model. `stream` yields `LLMEvent`s (an async generator: a turn cut at its bound
    closes it at once); both raise `LLMError` when it cannot answer."""

    def stream(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        tools: Sequence[ToolSpec] = (),
        tool_choice: str | None = None,
    ) -> AsyncGenerator[LLMEvent, None]: ...

    async def complete(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> Completion: ...


class LLMError(Exception):
    """The model could not answer (after the retries). The message is safe to log."""


class StreamCut(LLMError):
    """The model stopped in the middle of an answer (timeout between chunks, cut connection)."""
