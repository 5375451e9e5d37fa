"""Telegram's flood limits, with final messages first.

PTB's `AIORateLimiter` counts every call alike: with many answers streaming at once, draft
updates and typing signals fill the 30 calls/s budget and each final message waits behind
them (issue 14: 11 s from the first token to the first visible text at the median, 500
conversations). Here a call is either *required* (a message, a final edit: it waits for its
token, first come first served) or *best-effort* (a draft update, a partial edit: the caller
marks it with `rate_limit_args=BEST_EFFORT`; a typing signal, `LOW`, shows no text and goes
only while half the overall bucket is unused). A best-effort call is sent only from the
budget left over: never while a required call waits, never from the last `reserve` of the
overall budget or the last token of its chat, never during a flood wait, and, so that the
leftover is shared, not before the chat's turn (`_fair`). Otherwise it is skipped and
returns `True` without reaching Telegram: the next update carries the whole text anyway.

Limits, as Telegram documents them
(https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this):
30 messages/s overall, 20/min per group, about 1/s per private chat with short bursts. The
buckets are aiolimiter's, as in `AIORateLimiter`; `RetryAfter` halts every call for its
`retry_after` and a required call is retried up to `max_retries` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

from aiolimiter import AsyncLimiter
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

log = logging.getLogger(__name__)

JSON = bool | dict[str, Any] | list[dict[str, Any]]
PRIVATE_BURST: Final = 3.0  # a private chat: 3 calls at once, then 1 per second
RESERVE: Final = 0.2  # the share of the overall budget best-effort calls never take
MAX_LIMITERS: Final = 512  # chat buckets kept before idle ones are dropped (as PTB does)


@dataclass(slots=True)
class _Chat:
    """One chat's bucket, and when its last best-effort call went (for `_fair`)."""

    limiter: AsyncLimiter
    spare_at: float = -math.inf


class RateLimitArgs(TypedDict, total=False):
    """What a caller may pass as `rate_limit_args=` to an `ExtBot` method."""

    priority: Literal["required", "best_effort", "low"]
    max_retries: int


BEST_EFFORT: Final[RateLimitArgs] = {"priority": "best_effort"}
LOW: Final[RateLimitArgs] = {"priority": "low"}  # typing: never at the expense of any text
SKIPPED: Final = True  # what a skipped call returns: PTB's own result of a bool method


class PriorityRateLimiter(BaseRateLimiter[RateLimitArgs]):
    """Overall and per-chat token buckets; required calls wait, best-effort calls yield."""

    def __init__(
        self,
        *,
        max_rate: float = 30,
        group_max_rate: float = 20,
        group_period: float = 60,
        private_burst: float = PRIVATE_BURST,
        reserve: float = RESERVE,
        max_retries: int = 3,
    ) -> None:
        self._overall = AsyncLimiter(max_rate, 1)
        self._reserve = min(max(1.0, max_rate * reserve), max(max_rate - 1, 0.0))
        self._group = (group_max_rate, group_period)
        self._private = (private_burst, private_burst)  # 1 per second on average
        self._chats: dict[int | str, _Chat] = {}
        self._window = (0.0, set[int](), 0)  # (start, ids of chats asking now, count before)
        self._max_retries = max_retries
        self._waiting = 0  # required calls waiting for an overall token
        self._resume_at = 0.0  # loop time before which Telegram asked for no calls

    async def initialize(self) -> None:
        """Nothing to open: the buckets are in memory."""

    async def shutdown(self) -> None:
        """Nothing to close."""

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, JSON]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: RateLimitArgs | None,
    ) -> JSON:
        """Send now, later, or (best-effort only) not at all; see the module docstring."""
        options = rate_limit_args or {}
        priority = options.get("priority", "required")
        best_effort = priority != "required"
        retries = options.get("max_retries", self._max_retries)
        chat_id = data.get("chat_id")
        chat = self._chat(chat_id) if chat_id is not None else None
        attempt = 0
        while True:
            if best_effort:
                if priority == "low":
                    go = self._spare(chat, headroom=self._overall.max_rate / 2)
                else:  # _fair first: every chat asking counts, spare or not
                    go = self._fair(chat) and self._spare(chat, headroom=self._reserve)
                if not go:
                    return SKIPPED
                await self._take_spare(chat, shows_text=priority == "best_effort")
            else:
                await self._take(chat.limiter if chat else None)
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                self._halt(exc)
                if best_effort:
                    return SKIPPED  # the next update carries the whole text
                if attempt >= retries:
                    log.warning("telegram: %s still flood-limited after %d retries",
                                endpoint, retries)  # fmt: skip
                    raise
                attempt += 1

    def _spare(self, chat: _Chat | None, *, headroom: float) -> bool:
        """Whether a best-effort call may go now without delaying any required one."""
        return (
            not self._waiting
            and asyncio.get_running_loop().time() >= self._resume_at
            and self._overall.has_capacity(1 + headroom)
            and (chat is None or chat.limiter.has_capacity(2))  # the last token: its final
        )

    def _fair(self, chat: _Chat | None) -> bool:
        """Whether it is this chat's turn. Without turns, the same few chats (those whose
        calls come first after the bucket leaks) would take every spare token and the
        others would show nothing until their final message. The chats asking within a
        second share the spare rate: each may go once per `chats / spare rate` seconds."""
        if chat is None:
            return True
        now = asyncio.get_running_loop().time()
        start, asking, before = self._window
        if now - start >= 1.0:
            start, asking, before = now, set(), len(asking)
            self._window = (start, asking, before)
        asking.add(id(chat))
        spare_rate = max(self._overall.max_rate - self._reserve, 1.0)
        return now - chat.spare_at >= max(before, len(asking)) / spare_rate

    async def _take_spare(self, chat: _Chat | None, *, shows_text: bool) -> None:
        """Tokens that `_spare` just saw: taken without suspending, so nobody took them first."""
        if chat is not None:
            if shows_text:  # a typing signal does not use the chat's turn at showing text
                chat.spare_at = asyncio.get_running_loop().time()
            await chat.limiter.acquire()
            await self._overall.acquire()

    async def _take(self, chat: AsyncLimiter | None) -> None:
        """The chat's token, then an overall one (as PTB orders them), after any flood wait.
        Waiting for the overall one is counted: best-effort calls yield while anyone waits."""
        await self._halted()
        if chat is None:
            return  # getMe, setWebhook and the like: not messages, not counted (as in PTB)
        await chat.acquire()
        self._waiting += 1
        try:
            await self._overall.acquire()
        finally:
            self._waiting -= 1
        await self._halted()  # a flood wait may have begun while this call queued

    async def _halted(self) -> None:
        """Sleep out a flood wait that Telegram asked for."""
        loop = asyncio.get_running_loop()
        # A deadline, not an event: another 429 during the sleep may push it later.
        while (left := self._resume_at - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)

    def _halt(self, exc: RetryAfter) -> None:
        wait = exc.retry_after
        seconds = wait if isinstance(wait, int | float) else wait.total_seconds()
        resume = asyncio.get_running_loop().time() + seconds + 0.1
        self._resume_at = max(self._resume_at, resume)
        log.info("telegram: flood limit, every call waits %.1f s", seconds + 0.1)

    def _chat(self, chat_id: Any) -> _Chat | None:
        """The chat's bucket: 20/min for a group or channel (negative id or @name), bursts
        then 1/s for a private chat."""
        with contextlib.suppress(ValueError, TypeError):
            chat_id = int(chat_id)
        if not isinstance(chat_id, int | str):
            return None
        chat = self._chats.get(chat_id)
        if chat is None:
            if len(self._chats) >= MAX_LIMITERS:
                self._forget_idle()
            group = isinstance(chat_id, str) or chat_id < 0
            chat = _Chat(AsyncLimiter(*(self._group if group else self._private)))
            self._chats[chat_id] = chat
        return chat

    def _forget_idle(self) -> None:
        """Drop buckets that are full again: a new one would start the same."""
        for key, chat in list(self._chats.items()):
            if chat.limiter.has_capacity(chat.limiter.max_rate):
                del self._chats[key]
