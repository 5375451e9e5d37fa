"""The front of the core: each message's place in its conversation's line, fixed on arrival.

Adapters call the handler as soon as an event is parsed, before anything awaits. `Intake`
takes the message's place in its conversation's line right then, synchronously, so the
turns of one conversation run one at a time in the order the platform delivered them, even
though the awaits in front of a turn (the delivery dedupe, a thread's history check) finish
in any order. Those awaits run concurrently; only the turn itself waits for its place.

Across processes (replicas behind a load balancer, each given some of a conversation's
messages) the platform's own order decides: a message is claimed in the conversation's
pending set in the store with its dedupe, in the same round trip, and when its turn comes
here it waits until the message just before it in that order, if another process has it,
is answered (or that process's heartbeat has expired: it died, and its place is released).
A place names the process that claimed it, so a process never waits in the store for its
own messages: its line orders them. The conversation lock then keeps the turns one at a time.

It also bounds the answers being written at once (`limits.max_in_flight`, for every platform
alike, instead of one SDK's default): a message whose turn has come waits for a free slot,
and `waiting` shows how many do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from core.model import ContextKey, Message
from core.protocols import Handler, Responder
from core.storage import Deduper, Deliveries

log = logging.getLogger(__name__)

HasHistory = Callable[[ContextKey], Awaitable[bool]]
POLL = 0.02  # seconds before the first look again at another process's earlier message
POLL_MAX = 0.5  # the looks back off to this


class Claim:
    """A message's place in its conversation's pending set in the store, while it is handled.

    A chat turn releases it inside its own write (no round trip of its own) and says so;
    on every other path (a command, a refusal, a failure) the intake releases it after."""

    __slots__ = ("line", "place", "released")

    def __init__(self, line: ContextKey, place: str) -> None:
        self.line = line
        self.place = place
        self.released = False


current_claim: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("claim", default=None)
"""The claim of the message the current task handles (as `current_turn` is its turn id)."""


class Place:
    """One message's place in its conversation's line."""

    __slots__ = ("_ahead", "_done")

    def __init__(self, ahead: asyncio.Future[None] | None, done: asyncio.Future[None]) -> None:
        self._ahead = ahead
        self._done = done

    async def wait(self) -> None:
        """Until every message ahead in the line has been handled."""
        if self._ahead is not None and not self._ahead.done():
            await asyncio.shield(self._ahead)

    def leave(self) -> None:
        """Let the next message go, but never before the ones ahead (also when this one was
        dropped or cancelled while it waited)."""
        ahead, done = self._ahead, self._done
        if done.done():
            return
        if ahead is None or ahead.done():
            done.set_result(None)
            return

        def after_ahead(_: asyncio.Future[None]) -> None:
            if not done.done():
                done.set_result(None)

        ahead.add_done_callback(after_ahead)


class Lines:
    """A line per conversation: the tail of each is the last place taken."""

    def __init__(self) -> None:
        self._tails: dict[ContextKey, asyncio.Future[None]] = {}

    def enter(self, key: ContextKey) -> Place:
        """Take the next place in `key`'s line. Synchronous: the order of calls is the order."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ahead = self._tails.get(key)
        self._tails[key] = done
        done.add_done_callback(lambda _: self._forget(key, done))
        return Place(ahead, done)

    def _forget(self, key: ContextKey, done: asyncio.Future[None]) -> None:
        if self._tails.get(key) is done:
            del self._tails[key]


class Intake:
    """The outermost `Handler`: place in line, delivery dedupe, thread check, a free slot."""

    def __init__(
        self,
        handler: Handler,
        *,
        conversation: Callable[[Message], ContextKey],
        deduper: Deduper | Deliveries | None = None,
        has_history: HasHistory | None = None,
        max_in_flight: int = 0,
        max_wait: float = 120.0,
        owner: str = "",
        keep_cancelled: bool = False,
    ) -> None:
        self.handler = handler
        self.conversation = conversation
        self.deduper = deduper
        # Checked once: a runtime Protocol check costs tens of microseconds.
        self._deliveries = deduper if isinstance(deduper, Deliveries) else None
        self.max_wait = max_wait
        # Who this process is in the places it claims (the journal's heartbeat id), so a
        # place of its own is known as one without asking the store.
        self.owner = owner or secrets.token_hex(8)
        self.has_history = has_history
        # A worker's message cancelled by shutdown keeps its place: the partition's next
        # owner finds it there and answers the message anew (`Deliveries.retake`).
        self.keep_cancelled = keep_cancelled
        self.lines = Lines()
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight > 0 else None
        self.waiting = 0  # messages whose turn has come, waiting for a free slot
        self.queued = 0  # messages waiting for an earlier one of their conversation
        self.claims = 0  # deliveries checked in the store (first seen or not)

    def __call__(self, message: Message, responder: Responder) -> Coroutine[Any, Any, None]:
        # Not `async def`: the place is taken now, when the adapter calls, not when the
        # returned coroutine first runs.
        line = self.conversation(message)
        return self._handle(line, self.lines.enter(line), message, responder)

    async def _handle(
        self, line: ContextKey, place: Place, message: Message, responder: Responder
    ) -> None:
        claim: Claim | None = None
        token = current_claim.set(None)
        try:
            first, claimed, ahead = await self._claim(line, message)
            if not first:
                return
            if claimed:
                claim = Claim(line, claimed)
                current_claim.set(claim)
            self.queued += 1
            try:
                await place.wait()
                if ahead and not self._mine(ahead):
                    await self._after(line, ahead)
            finally:
                self.queued -= 1
            if message.follow_up and not await self._known(line):
                return
            await self._slot()
            try:
                await self.handler(message, responder)
            finally:
                if self._slots is not None:
                    self._slots.release()
        except asyncio.CancelledError:
            if claim is not None and self.keep_cancelled:
                claim.released = True  # not answered: left for the next owner to retake
            raise
        finally:
            place.leave()
            current_claim.reset(token)
            if claim is not None and not claim.released and self._deliveries is not None:
                await self._deliveries.leave(line, claim.place)

    async def _slot(self) -> None:
        """One of `max_in_flight` slots (none to take without a bound)."""
        if self._slots is None:
            return
        if self._slots.locked():
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()

    async def _claim(self, line: ContextKey, message: Message) -> tuple[bool, str, str]:
        """(first seen, our place in the store's pending set, the place just before it).
        A redelivery (a retry, another replica on the same token) is answered once."""
        deduper = self.deduper
        if not message.delivery_id or deduper is None:
            return True, "", ""
        claimed = ahead = ""
        if message.order and self._deliveries is not None:
            claimed = f"{message.order}:{message.delivery_id}:{self.owner}"
            first, ahead = await self._deliveries.claim(
                line, message.platform, message.delivery_id, claimed
            )
        else:
            first = await deduper.first_seen(message.platform, message.delivery_id)
        self.claims += 1
        if not first:
            log.info("%s: delivery %s came again; answered once", message.platform,
                     message.delivery_id)  # fmt: skip
            return False, "", ""
        return True, claimed, ahead

    def _mine(self, place: str) -> bool:
        """A place this process claimed: its own line has ordered it already (also one whose
        claim ran in the store before a later one's but replied after it)."""
        return place.rpartition(":")[2] == self.owner

    async def _after(self, line: ContextKey, ahead: str) -> None:
        """Wait while another process has the message just before this one (it waited for
        the one before it in turn) and lives. A dead process's place, which it will never
        release, is released here; so is one still there after `max_wait`."""
        deliveries = self._deliveries
        assert deliveries is not None  # only ordered claims have a place ahead
        deadline = time.monotonic() + self.max_wait
        pause = POLL
        while (state := await deliveries.pending(line, ahead)) != "answered":
            if state == "orphaned" or time.monotonic() >= deadline:
                why = "died" if state == "orphaned" else "is stuck"
                log.warning("an earlier message of this conversation is held by a process "
                            "that %s; going on", why)  # fmt: skip
                await deliveries.leave(line, ahead)
                return
            await asyncio.sleep(pause)  # held in another process: nothing here to wait on
            pause = min(pause * 2, POLL_MAX)

    async def _known(self, line: ContextKey) -> bool:
        """A follow-up (a thread reply without a mention) is answered only in a conversation
        the bot is already part of."""
        if self.has_history is None:
            return True
        return await self.has_history(line)
