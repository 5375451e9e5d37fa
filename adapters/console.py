"""The console adapter: `chatbot chat`, a terminal conversation through the same core.

The terminal cannot edit what it printed, so an "edit" prints only the new end of the text;
with an edit interval of 0 every model delta appears as it arrives.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import TextIO

from core.model import ContextKey, Message, MessageRef, User, parse_command
from core.protocols import Handler

PROMPT = "you> "
BOT = "bot> "


class ConsoleResponder:
    """Prints the answer as it streams."""

    limit = 1_000_000
    typing_interval = 0.0

    def __init__(self, out: TextIO, edit_interval: float = 0.0) -> None:
        self.out = out
        self.edit_interval = edit_interval
        self._printed: dict[str, str] = {}
        self._ids = itertools.count(1)

    async def send(self, text: str, *, final: bool) -> MessageRef:
        ref = MessageRef(str(next(self._ids)))
        self._write(BOT + text)
        self._printed[ref.id] = text
        if final:
            self._write("\n")
        return ref

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        before = self._printed.get(ref.id, "")
        if text.startswith(before):
            self._write(text[len(before) :])
        else:  # the text changed behind what was printed: print it whole
            self._write("\n" + BOT + text)
        self._printed[ref.id] = text
        if final:
            self._write("\n")

    async def typing(self) -> None:
        return None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class ConsoleChat:
    """Reads lines from stdin and answers each through the core, one at a time."""

    name = "console"

    def __init__(
        self,
        handler: Handler,
        *,
        user: str = "console",
        edit_interval: float = 0.0,
        stdin: TextIO | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.handler = handler
        self.user = user
        self.stdin = stdin or sys.stdin
        self.out = out or sys.stdout
        self.responder = ConsoleResponder(self.out, edit_interval)
        self._ids = itertools.count(1)

    def to_message(self, line: str) -> Message:
        """A typed line as a core message; `/reset` and friends are commands."""
        return Message(
            platform="console",
            key=ContextKey("console", channel="terminal", user=self.user),
            user=User(self.user, self.user),
            text=line,
            message_id=str(next(self._ids)),
            addressed=True,
            command=parse_command(line),
        )

    async def run(self) -> None:
        """Chat until end of input (Ctrl-D) or cancellation (Ctrl-C)."""
        self.out.write("Chatting with the bot. /help for commands, Ctrl-D to quit.\n")
        while True:
            self.out.write(PROMPT)
            self.out.flush()
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:
                self.out.write("\n")
                return
            line = line.strip()
            if line:
                await self.handler(self.to_message(line), self.responder)
