"""What every platform adapter offers the composition root in `bots/`.

An adapter is built with the core `Handler` (and a `Deduper`), mounts its webhook routes on
the bot's one aiohttp server, starts its transport, and stops in two steps so answers in
flight can finish: `stop()` ends the intake, `close()` releases the clients afterwards.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aiohttp import web

from core.model import Message
from core.protocols import Responder


class AdapterStartError(Exception):
    """The platform refused to start (bad token, unreachable API). Safe to print."""


class Adapter(Protocol):
    name: str

    def mount(self, app: web.Application) -> None:
        """Add webhook routes. Called before the HTTP server starts."""

    async def start(self) -> None:
        """Connect (log in, start polling or the gateway). Raises `AdapterStartError`."""

    async def stop(self) -> None:
        """Stop taking new messages; answers in flight still need the clients."""

    async def close(self) -> None:
        """Release every client and session. Called after in-flight answers are drained."""

    def ready(self) -> bool:
        """Connected and able to answer (for /healthz and /readyz)."""


@runtime_checkable
class Recovers(Protocol):
    """An adapter that can answer a message again without its original event.

    After a crash the journal gives back the `Message` only; the adapter rebuilds a
    Responder that posts where the original answer would have gone (the channel, thread or
    topic of `message.key`, replying to `message.message_id` where the platform can).
    """

    def responder_for(self, message: Message) -> Responder: ...


@runtime_checkable
class Sends(Recovers, Protocol):
    """An adapter that can run in a worker (`chatbot run --role worker`): its platform's
    HTTP API alone, no intake. Messages come from the ingress through Redis Streams and are
    answered through `responder_for`."""

    name: str

    async def start_sending(self) -> None:
        """Open the API client and check the token; take no events. Raises
        `AdapterStartError`."""
        ...
