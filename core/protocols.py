"""The contracts between the core, the adapters and the model (the store's: `core/storage.py`).

As in ASGI, the whole core is one callable: a `Handler` takes a `Message` and a `Responder`.
The router is a Handler, the chat turn is a Handler, and middlewares wrap Handlers.
Interfaces are Protocols so test fakes need no inheritance.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from core.model import (
    ApprovalRequest,
    Attachment,
    Decision,
    Message,
    MessageRef,
    OutgoingFile,
    ToolCall,
    Turn,
)


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


class FetchError(Exception):
    """A file could not be fetched (refused address, too large, the platform failed). The
    message is short and safe to show."""


@runtime_checkable
class MediaResponder(Responder, Protocol):
    """A `Responder` on a platform that carries files (all but the terminal's input).

    `fetch` gets an attachment's bytes with the platform's own auth, from the address the
    platform gave and never a private one, and at most `max_bytes` of them (raises
    `FetchError`). `send_file` posts a file where the answer goes (the thread, the topic,
    the interaction's follow-up)."""

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes: ...

    async def send_file(self, file: OutgoingFile) -> MessageRef: ...


@runtime_checkable
class Approver(Responder, Protocol):
    """A `Responder` on a platform with buttons (or a y/n prompt): it posts an approval
    request where the answer goes, with Approve and Deny."""

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef: ...


class DecisionReply(Protocol):
    """How the core answers one press of a button."""

    async def notice(self, text: str) -> None:
        """Tell the presser alone (Slack ephemeral, Telegram's callback answer, Discord's
        ephemeral response)."""
        ...

    async def settle(self, text: str) -> None:
        """Replace the request's message with its outcome, the buttons gone."""
        ...


Handler = Callable[[Message, Responder], Awaitable[None]]
"""The core contract: handle one message, answering through the responder."""

DecisionHandler = Callable[
    [Decision, DecisionReply, Callable[[Message], Responder]], Awaitable[None]
]
"""A press of Approve or Deny (`ChatTurn.decide`): the decision, how to answer the presser
and update the request, and the adapter's `responder_for` (the answer goes on where the
original message was)."""


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


class MediaModel(Protocol):
    """The model provider's media endpoints (Images, speech to text, text to speech). Each
    raises `LLMError` when it cannot answer."""

    async def draw(self, prompt: str, *, model: str, size: str) -> bytes:
        """A PNG (or the format the server chose) for `prompt`."""
        ...

    async def transcribe(self, audio: bytes, *, name: str, mime_type: str, model: str) -> str: ...

    async def speak(self, text: str, *, model: str, voice: str) -> bytes:
        """OGG/Opus speech for `text` (what Telegram's voice notes are)."""
        ...


class LLMError(Exception):
    """The model could not answer (after the retries). The message is safe to log."""


class StreamCut(LLMError):
    """The model stopped in the middle of an answer (timeout between chunks, cut connection)."""
