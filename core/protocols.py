"""The contracts between the core, the adapters and the model (the store's: `core/storage.py`).

As in ASGI, the whole core is one callable: a `Handler` takes a `Message` and a `Responder`.
The router is a Handler, the chat turn is a Handler, and middlewares wrap Handlers.
Interfaces are Protocols so test fakes need no inheritance.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.model import Message, MessageRef, ToolCall, Turn


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
