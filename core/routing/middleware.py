"""Handler wrappers: every message gets a turn id, an answer even on a bug, and is tracked
so shutdown can wait for the answers in flight."""

from __future__ import annotations

import asyncio
import logging
import time

from core.conversation.turns import current_turn, new_turn_id
from core.model import Message
from core.policies.masking import Masker
from core.protocols import Handler, Responder
from core.streaming.reply import reply

log = logging.getLogger(__name__)

BUG_APOLOGY = "Sorry, something went wrong on my side while answering. Please try again."


class Guarded:
    """Catches every error of a turn: logged with its turn id, a short apology in chat."""

    def __init__(
        self, handler: Handler, *, log_text: bool = False, masker: Masker | None = None
    ) -> None:
        self.handler = handler
        self.log_text = log_text
        self.masker = masker  # `privacy.mask`: logs get the masked text too

    async def __call__(self, message: Message, responder: Responder) -> None:
        token = current_turn.set(new_turn_id())
        started = time.perf_counter()
        log.info(
            "turn start platform=%s message=%s chars=%d",
            message.platform,
            message.message_id,
            len(message.text),
        )
        if self.log_text:  # off by default: user text stays out of the logs
            text = self.masker.mask(message.text, {}).text if self.masker else message.text
            log.info("turn text %r", text[:500])
        try:
            await self.handler(message, responder)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("turn failed")
            try:
                await reply(responder, BUG_APOLOGY)
            except Exception as exc:
                log.error("could not send the apology: %s", type(exc).__name__)
        finally:
            log.info("turn end ms=%.1f", (time.perf_counter() - started) * 1000)
            current_turn.reset(token)


class InFlight:
    """Counts running turns so shutdown can drain them within a grace period, and cancels
    the ones that outlive it (each then says on the platform that it was interrupted)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[object]] = set()

    async def __call__(self, message: Message, responder: Responder) -> None:
        self.running += 1
        self._idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.handler(message, responder)
        finally:
            if task is not None:
                self._tasks.discard(task)
            self.running -= 1
            if self.running == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Wait until no turn runs (True) or `grace` seconds pass (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def cancel(self, grace: float) -> None:
        """Cancel the turns still running and give them `grace` seconds to mark their partial
        answers as interrupted. Their journal entries stay: another process answers anew."""
        for task in list(self._tasks):
            task.cancel()
        await self.drain(grace)
