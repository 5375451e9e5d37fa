"""The console adapter: `chatbot chat`, a terminal conversation through the same core.

The terminal cannot edit what it printed, so an "edit" prints only the new end of the text;
with an edit interval of 0 every model delta appears as it arrives. A tool that needs a yes
prints its request and `Approve? [y/n]`: the next line that is y, yes, n or no decides it (the
most recent request first); any other line is a message as usual, and the request waits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TextIO

from core.model import (
    ApprovalRequest,
    ContextKey,
    Decision,
    Message,
    MessageRef,
    User,
    parse_command,
)
from core.protocols import DecisionHandler, Handler
from core.storage import Person, PersonData
from core.tools.approvals import PendingApproval

log = logging.getLogger(__name__)

PROMPT = "you> "
BOT = "bot> "
ASK = "Approve? [y/n]"
ANSWERS = {"y": True, "yes": True, "n": False, "no": False}


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


class ConsoleApprover(ConsoleResponder):
    """A `ConsoleResponder` that asks for approvals (when the chat has an `on_decision`):
    the request as Markdown, as the terminal shows everything, then `Approve? [y/n]`."""

    def __init__(self, out: TextIO, edit_interval: float, waiting: list[ApprovalRequest]) -> None:
        super().__init__(out, edit_interval)
        self.waiting = waiting  # the chat's: requests the next y or n decides

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        self._write(f"{BOT}{request.text}\n{ASK}\n")
        self.waiting.append(request)
        return MessageRef(f"approval-{request.id}")


class ConsoleReply:
    """A `DecisionReply` on the terminal: the notice and the outcome are printed lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def notice(self, text: str) -> None:
        self.out.write(f"{BOT}{text}\n")
        self.out.flush()

    async def settle(self, text: str) -> None:
        self.out.write(f"{BOT}{text}\n")
        self.out.flush()


class PeopleData(Protocol):
    """The store port's part that knows a person's pending approvals."""

    async def person(self, person: Person) -> PersonData: ...


async def still_waiting(
    store: PeopleData, user: str, *, now: Callable[[], float] = time.time
) -> list[ApprovalRequest]:
    """A console user's approval requests not yet decided nor expired, oldest first: a chat
    started again (after Ctrl-D or a crash) asks for them again, since only the store
    remembers them."""
    records = (await store.person(Person("console", user))).approvals
    pending = [p for raw in records if (p := PendingApproval.from_json(raw)) is not None]
    requests = []
    for item in sorted(pending, key=lambda p: p.expires_at):
        if item.expires_at <= now():
            continue
        calls = "; ".join(f"`{call.name}` with `{call.arguments}`" for call in item.calls)
        text = f"🔐 **Still waiting for your approval** (asked earlier): {calls}"
        requests.append(ApprovalRequest(item.id, text, item.calls[0].name))
    return requests


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
        on_decision: DecisionHandler | None = None,
        waiting: Sequence[ApprovalRequest] = (),
    ) -> None:
        self.handler = handler
        self.user = user
        self.stdin = stdin or sys.stdin
        self.out = out or sys.stdout
        self.on_decision = on_decision  # None: tools that need a yes are not run here
        self.waiting = list(waiting)  # asked earlier (`still_waiting`): asked again at start
        self.responder: ConsoleResponder = (
            ConsoleApprover(self.out, edit_interval, self.waiting)
            if on_decision is not None
            else ConsoleResponder(self.out, edit_interval)
        )
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
        if self.on_decision is not None:
            for request in self.waiting:
                self.out.write(f"{BOT}{request.text}\n{ASK}\n")
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
            if self.waiting and line.lower() in ANSWERS and self.on_decision is not None:
                await self._decide(self.waiting.pop(), ANSWERS[line.lower()])
            elif line:
                before = list(self.waiting)
                await self.handler(self.to_message(line), self.responder)
                if still := [r for r in before if r in self.waiting]:
                    tools = ", ".join(f"`{r.tool}`" for r in still)
                    self.out.write(f"(still waiting for your approval of {tools}: y or n)\n")
        self.out.write("\n")
        self.out.flush()

    async def _decide(self, request: ApprovalRequest, approve: bool) -> None:
        """The typed y or n as a press: the outcome and the answer print here."""
        assert self.on_decision is not None
        decision = Decision(request.id, approve, User(self.user, self.user), "console")
        try:
            await self.on_decision(decision, ConsoleReply(self.out), self.responder_for)
        except Exception as exc:  # logged; the chat goes on
            log.error("an approval decision failed: %s", type(exc).__name__)
            self.out.write(f"{BOT}Sorry, that decision could not be taken.\n")

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
