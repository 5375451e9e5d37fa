"""What every platform adapter offers the composition root in `bots/`.

An adapter is built with the core `Handler` (and a `Deduper`), mounts its webhook routes on
the bot's one aiohttp server, starts its transport, and stops in two steps so answers in
flight can finish: `stop()` ends the intake, `close()` releases the clients afterwards.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


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
