"""The streaming responder: model deltas in, throttled platform sends and edits out.

Written once for every platform. It shows that the bot is working (typing) when the first
text is slower than `typing_delay`, posts the first text as soon as there is any, edits at
most once per `edit_interval`, moves on to a new message when the platform's limit (as the
responder measures the rendered part) would be passed, and ends every part with an exact
final edit. A flusher task does the platform calls so reading the model never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from core.model import MessageRef
from core.protocols import Responder
from core.streaming.splitting import open_fence, split_text, take_part

log = logging.getLogger(__name__)

SEND_ATTEMPTS = 3
RETRY_DELAY = 0.5
CAP_NOTE = "\n\n_(The answer was too long; I stopped it here.)_"


class DeliveryError(Exception):
    """The platform refused a message after every retry."""


class StreamingReply:
    """One answer being written. Use as `async with StreamingReply(responder) as reply:`."""

    def __init__(
        self,
        responder: Responder,
        *,
        retry_delay: float = RETRY_DELAY,
        typing_delay: float = 0.0,
        max_chars: int = 0,
        max_messages: int = 0,
    ) -> None:
        self._responder = responder
        self._max_chars = max_chars  # 0: no bound (a model streaming without end is bounded)
        self._max_messages = max_messages
        self._length = 0
        self._parts: list[str] = []  # the parts completed so far, as shown
        self.capped = False  # the answer hit a bound: the model's stream should be closed
        self._typing_delay = typing_delay
        self._limit = max(responder.limit, 16)
        self._measure = responder.measure
        self._interval = max(responder.edit_interval, 0.0)
        self._retry_delay = retry_delay
        self._full: list[str] = []  # every delta, for the history
        self._current = ""  # the text of the part being written
        self._ref: MessageRef | None = None
        self._last_shown = ""
        self._last_edit = 0.0
        self._last_final = False
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._render_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._typing_timer: asyncio.TimerHandle | None = None
        self._answered_at: float | None = None  # when the first text went on its way
        self.messages_sent = 0
        self.edits_sent = 0

    async def __aenter__(self) -> StreamingReply:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._tasks = [asyncio.create_task(self._flush_loop(), name="flush")]
        if self._typing_delay > 0:
            # A timer, not a task: most answers start within the delay and need no typing
            # signal before their text, so most turns never start the typing task at all.
            self._typing_timer = loop.call_later(self._typing_delay, self._typing_due)
        else:
            self._start_typing()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop_tasks()

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._full)

    @property
    def shown(self) -> bool:
        """Whether any text has reached the platform."""
        return self.messages_sent > 0

    def feed(self, delta: str) -> None:
        """Add model output; the flusher shows it at the next allowed moment. Past
        `max_chars` the answer ends with a short note and `capped` is set."""
        if not delta or self.capped:
            return
        if self._max_chars and self._length + len(delta) > self._max_chars:
            delta = delta[: self._max_chars - self._length]
            fence = open_fence(self.text + delta)  # the note must not read as code
            if fence is not None:
                delta += ("" if delta.endswith("\n") else "\n") + fence[0]
            delta += CAP_NOTE
            self.capped = True
        self._length += len(delta)
        self._full.append(delta)
        self._current += delta
        self._dirty.set()

    async def finish(self) -> str:
        """Show the exact full text and return it. Safe to call once."""
        await self._stop_tasks()
        async with self._render_lock:
            await self._render(final=True)
        return self.text

    async def stop(self) -> None:
        """End typing and flushing without showing more (before a reply sent apart)."""
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        # No cancellation: a typing signal in flight (Slack posts a placeholder) must land
        # before the final text, or the adapter could not replace it.
        self._closing.set()
        self._dirty.set()
        if self._typing_timer is not None:
            self._typing_timer.cancel()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the turn itself is being cancelled, not only this child

    def _typing_due(self) -> None:
        """The typing delay has passed: signal now if no text is on its way yet. A renewing
        signal (Telegram, Discord) still shows while a long answer that started within the
        delay streams, from one interval after its first text."""
        if self._closing.is_set():
            return
        if self._answered_at is None or self._responder.typing_interval > 0:
            self._start_typing()

    def _start_typing(self) -> None:
        self._tasks.append(asyncio.create_task(self._typing_loop(), name="typing"))

    async def _typing_loop(self) -> None:
        interval = self._responder.typing_interval
        if self._answered_at is not None:
            # Decided here, not when the task was made: the first text may have gone on its
            # way since (in the same loop iteration as the timer), and no signal follows it
            # but a renewing one, one interval after it.
            if interval <= 0:
                return
            wait = self._answered_at + interval - self._loop.time()
            if wait > 0:
                await _wait(self._closing, wait)
        while not self._closing.is_set():
            try:
                await self._responder.typing()
            except Exception as exc:  # a typing signal is decoration, never fatal
                log.debug("typing signal failed: %s", type(exc).__name__)
            if interval <= 0:
                return
            await _wait(self._closing, interval)

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if self._closing.is_set():
                return
            if self._ref is not None and self._interval > 0:
                wait = self._last_edit + self._interval - self._loop.time()
                if wait > 0:
                    await _wait(self._closing, wait)
                    if self._closing.is_set():
                        return
            self._dirty.clear()
            async with self._render_lock:
                await self._render(final=False)

    async def _render(self, *, final: bool) -> None:
        """Bring the platform up to date with `_current`, splitting at the limit."""
        while True:
            part, rest = take_part(self._current, self._limit, self._measure)
            if not rest:
                break
            if self._last_message_allowed():
                await self._cap_here()
                return
            self._current = rest
            await self._show(part, final=True)
            self._parts.append(part)
            self._ref, self._last_shown = None, ""
        if self._current.strip():
            await self._show(self._current, final=final)

    def _last_message_allowed(self) -> bool:
        """Whether the part being completed is the last platform message this answer may
        use (`max_messages`), so that the text past it must be cut."""
        if not self._max_messages:
            return False
        number = self.messages_sent if self._ref is not None else self.messages_sent + 1
        return number >= self._max_messages

    async def _cap_here(self) -> None:
        """End the answer in this part, with the note; the history keeps what was shown."""
        room = max(self._limit - self._measure(CAP_NOTE), 16)
        part = take_part(self._current, room, self._measure)[0].rstrip() + CAP_NOTE
        self._current, self.capped = "", True
        await self._show(part, final=True)
        self._full = [*self._parts, part]

    async def _show(self, text: str, *, final: bool) -> None:
        if not text.strip():
            return
        if self._ref is None:
            if self._answered_at is None:  # before the call: no typing signal after it
                self._answered_at = self._loop.time()
            self._ref = await self._send(text, final=final)
        else:
            if text == self._last_shown and (self._last_final or not final):
                return  # never an edit that changes nothing
            await self._edit(self._ref, text, final=final)
        self._last_shown, self._last_final = text, final
        self._last_edit = self._loop.time()

    async def _send(self, text: str, *, final: bool) -> MessageRef:
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                ref = await self._responder.send(text, final=final)
            except Exception as exc:
                log.warning("send failed (attempt %d): %s", attempt, _describe(exc))
                if attempt == SEND_ATTEMPTS:
                    raise DeliveryError("the platform refused the message") from None
                await asyncio.sleep(self._retry_delay * attempt)
            else:
                self.messages_sent += 1
                return ref
        raise AssertionError("unreachable")

    async def _edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        try:
            await self._responder.edit(ref, text, final=final)
            self.edits_sent += 1
            return
        except Exception as exc:
            log.warning("edit failed: %s", _describe(exc))
            if not final:
                return  # the next edit carries the whole text anyway
        await asyncio.sleep(self._retry_delay)
        try:
            await self._responder.edit(ref, text, final=True)
            self.edits_sent += 1
        except Exception as exc:
            # The final text must not be lost: post it anew, then take the stale partial away.
            log.warning("final edit failed twice, sending anew: %s", _describe(exc))
            self._ref = await self._send(text, final=True)
            try:
                await self._responder.delete(ref)
            except Exception as exc:  # the complete answer is out; a stale partial may stay
                log.warning("could not remove the partial answer: %s", _describe(exc))


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass (no task per wait, unlike `wait_for`)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def reply(responder: Responder, text: str) -> None:
    """Send a complete (non-streamed) answer, split at the platform's limit."""
    for part in split_text(text, max(responder.limit, 16), responder.measure) or [text or "…"]:
        await responder.send(part, final=True)


def _describe(exc: BaseException) -> str:
    """An exception's kind and status, never its full text (which may echo a URL or token)."""
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' status={status}' if status else ''}"
