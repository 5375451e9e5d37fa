"""Intent routing: an ordered table of (match, handle) routes; the first match wins.

Built-in commands come first, then the plugins' commands, the unknown-command answer, the
configured intents (`intent:<name>`), and the chat turn (model and tools) as the fallback.
The allow/deny lists wrap the whole router. Matching and handling are kept apart, as in
Starlette's routing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from core.model import Message
from core.protocols import Handler, Responder

log = logging.getLogger(__name__)

Match = Callable[[Message], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the routing table."""

    name: str
    match: Match
    handle: Handler


def command(*names: str) -> Match:
    """Match a command by name."""
    wanted = frozenset(names)
    return lambda message: message.command is not None and message.command.name in wanted


def any_command(message: Message) -> bool:
    return message.command is not None


class Router:
    """A `Handler` that dispatches to the first matching route, else to `fallback`."""

    def __init__(self, routes: Sequence[Route], fallback: Handler) -> None:
        self.routes = list(routes)
        self.fallback = fallback

    def add(self, route: Route, *, first: bool = False) -> None:
        """Add a route at the end of the table (or at the start)."""
        if first:
            self.routes.insert(0, route)
        else:
            self.routes.append(route)

    def resolve(self, message: Message) -> tuple[str, Handler]:
        """The route that would handle `message` (for `chatbot intents test` and logs)."""
        message = unwrap_ask(message)
        for route in self.routes:
            if route.match(message):
                return route.name, route.handle
        return "chat", self.fallback

    async def __call__(self, message: Message, responder: Responder) -> None:
        message = unwrap_ask(message)
        name, handle = self.resolve(message)
        log.debug("route %s", name)
        await handle(message, responder)


def unwrap_ask(message: Message) -> Message:
    """`/ask some question` is the question itself, on every platform."""
    if message.command is not None and message.command.name == "ask":
        return replace(message, text=message.command.args, command=None, addressed=True)
    return message
