"""The console adapter: `chatbot chat`, a terminal conversation through the same core.

The terminal cannot edit what it printed, so an "edit" prints only the new end of the text;
with an edit interval of 0 every model delta appears as it arrives.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from core.model import ContextKey, Message, MessageRef, User, parse_command
from core.protocols import Handler

PROMPT = "you> "
BOT = "bot> "


class ConsoleResponder:
    """Prints the answer as it streams."""

    limit = 1_000_000
    typing_interval = 0.0

    def measure(self, text: str) -> int:
        """A terminal shows the Markdown as it is."""
        return len(text)

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

    async def delete(self, ref: MessageRef) -> None:
        return None  # printed text stays printed; the final text follows it

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
        self._reading: asyncio.Future[str] | None = None
        self._stopping = False

    def responder_for(self, message: Message) -> ConsoleResponder:
        """Answers recovered after a crash print here like any other."""
        return self.responder

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
            private=True,  # the terminal is the user's own
        )

    async def run(self) -> None:
        """Chat until end of input (Ctrl-D) or `stop()` (SIGTERM, Ctrl-C).

        A stop while an answer streams lets that answer finish first.
        """
        self._stopping = False
        self.out.write("Chatting with the bot. /help for commands, Ctrl-D to quit.\n")
        read_line = await self._line_reader()
        while not self._stopping:
            self.out.write(PROMPT)
            self.out.flush()
            self._reading = asyncio.ensure_future(read_line())
            try:
                line = await self._reading
            except asyncio.CancelledError:
                if self._stopping:
                    break
                raise
            finally:
                self._reading = None
            if not line:
                break
            line = line.strip()
            if line:
                await self.handler(self.to_message(line), self.responder)
        self.out.write("\n")
        self.out.flush()

    def stop(self) -> None:
        """End the chat: at once when waiting for input, after the answer when answering."""
        self._stopping = True
        if self._reading is not None:
            self._reading.cancel()

    async def _line_reader(self) -> Callable[[], Awaitable[str]]:
        """Read stdin without a thread where possible, so a stop never waits on input."""
        if self.stdin is sys.stdin:
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            try:
                await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
                )
            except (ValueError, OSError):  # a regular file: reads never block for long
                pass
            else:

                async def read_pipe() -> str:
                    return (await reader.readline()).decode("utf-8", "replace")

                return read_pipe

        async def read_thread() -> str:
            return await asyncio.to_thread(self.stdin.readline)

        return read_thread
