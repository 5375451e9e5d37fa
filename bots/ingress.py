"""`chatbot run --role ingress`: the platforms' connections, and every message handed on.

The ingress is the `Handler` the adapters call: it appends the message to its conversation's
partition (`stores/redis/streams.py`) and returns, so the platform is acknowledged (Slack's
HTTP answer, a Discord interaction's deferral) only once the message is in Redis. It makes no
model call. The delivery dedupe rides in the append: a redelivery, or a second ingress on the
same token, appends nothing.

One conversation's messages are appended in the order the adapter handed them over, as the
core's intake orders them: each takes its place in its conversation's line synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from core.conversation.intake import Lines, Place
from core.model import ContextKey, Message
from core.protocols import Responder
from core.streaming.reply import reply
from stores.redis.health import FAILURES
from stores.redis.streams import RedisStreams

log = logging.getLogger(__name__)

NOT_QUEUED = "Sorry, I could not take your message just now. Please send it again."
ATTEMPTS = 3  # appends tried, a second apart, before the user is told


class Ingress:
    """The ingress role's handler: place in line, append, done."""

    def __init__(
        self, streams: RedisStreams, conversation: Callable[[Message], ContextKey]
    ) -> None:
        self.streams = streams
        self.conversation = conversation
        self.lines = Lines()
        self.appended = 0  # messages handed to the workers
        self.duplicates = 0  # deliveries appended before (retries, another ingress)
        self.failed = 0  # messages Redis did not take (the user was told)
        self.running = 0  # appends under way
        self._idle = asyncio.Event()
        self._idle.set()

    def __call__(self, message: Message, responder: Responder) -> Coroutine[Any, Any, None]:
        # Not `async def`: the place is taken when the adapter calls (as in `Intake`).
        line = self.conversation(message)
        return self._append(line, self.lines.enter(line), message, responder)

    async def _append(
        self, line: ContextKey, place: Place, message: Message, responder: Responder
    ) -> None:
        self.running += 1
        self._idle.clear()
        try:
            await place.wait()
            partition, token = self.streams.partition(line.id), secrets.token_hex(8)
            for attempt in range(ATTEMPTS):
                try:
                    entry = await self.streams.append(partition, message, token)
                except FAILURES as exc:
                    log.warning("message not appended (%s); attempt %d of %d",
                                type(exc).__name__, attempt + 1, ATTEMPTS)  # fmt: skip
                    await asyncio.sleep(1.0)
                    continue
                if entry is None:
                    self.duplicates += 1
                    log.info("%s: delivery %s came again; appended once", message.platform,
                             message.delivery_id)  # fmt: skip
                else:
                    self.appended += 1
                return
            self.failed += 1
        finally:
            place.leave()
            self.running -= 1
            if not self.running:
                self._idle.set()
        try:
            await reply(responder, NOT_QUEUED)
        except Exception as exc:
            log.warning("apology not delivered: %s", type(exc).__name__)

    async def drain(self, grace: float) -> bool:
        """Wait until no append is under way (True) or `grace` seconds pass."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True
