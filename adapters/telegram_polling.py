"""Telegram long polling that a malformed update cannot stop.

PTB reads a getUpdates answer as one list (`Update.de_list`): one entry it cannot read fails
the whole batch, which PTB's Updater logs with a traceback and fetches again at once, for
ever (the offset never moves past it); an entry whose `update_id` is not a number raises
past the Updater's loop and ends polling silently. So the getUpdates request checks each
entry in `parse_json_payload` (the hook PTB documents for reading Telegram's JSON): an
unreadable entry with a numeric id becomes a bare update with that id, so the offset moves
past it and it is never fetched again; one without a numeric id is dropped. `Poller` is the
loop itself, small enough to run under our `Supervisor`, which PTB's Updater is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from telegram import Bot, Update
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from adapters.telegram_http import AiohttpRequest
from adapters.webhook_guard import ThrottledLog

log = logging.getLogger(__name__)

NETWORK_PAUSE = 0.5  # seconds before getUpdates is tried again after a network error
NETWORK_PAUSE_MAX = 30.0  # the backoff doubles to this


class CheckedUpdatesRequest(AiohttpRequest):
    """The getUpdates request object: every entry readable, or reduced to its id."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.skipped = ThrottledLog(log)

    # PTB declares it a staticmethod, yet calls it on the instance
    def parse_json_payload(self, payload: bytes) -> dict[str, Any]:  # type: ignore[override]
        data: dict[str, Any] = super().parse_json_payload(payload)  # TelegramError if not JSON
        result = data.get("result") if isinstance(data, dict) else None
        if isinstance(result, list):
            data["result"] = [entry for entry in map(self._checked, result) if entry is not None]
        return data

    def _checked(self, entry: object) -> dict[str, Any] | None:
        update_id = entry.get("update_id") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or type(update_id) is not int:
            self.skipped.warning("telegram: dropped an update without a numeric update_id")
            return None
        try:
            Update.de_json(entry, None)
        except Exception:  # PTB reads shapes it does not expect with a TypeError or worse
            self.skipped.warning("telegram: skipped a malformed update")
            return {"update_id": update_id}
        return entry


class Poller:
    """getUpdates in a loop, each update into the Application's queue. A timeout is tried
    again at once, a flood wait waited out, and a network error (a reset, a 5xx) tried again
    after a backoff, as PTB's Updater does, with one throttled line; any other error (a
    revoked token, a bug) ends `run`, and the supervisor starts it again from the offset
    already confirmed."""

    def __init__(
        self,
        bot: Bot,
        queue: asyncio.Queue[object],
        *,
        timeout: int,
        allowed_updates: Sequence[str],
        deliver: Callable[[Update], Awaitable[object]] | None = None,
    ) -> None:
        self.bot = bot
        self.queue = queue
        # An ingress hands each update on (appends it) before the offset moves past it, so a
        # kill loses none: the next start fetches again what was not confirmed.
        self.deliver = deliver
        self.timeout = timeout
        self.allowed_updates = list(allowed_updates)
        self.offset = 0
        self.network = ThrottledLog(log)

    async def run(self) -> None:
        pause = NETWORK_PAUSE
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=self.offset, timeout=self.timeout, allowed_updates=self.allowed_updates
                )
            except TimedOut:
                continue
            except NetworkError as exc:
                if isinstance(exc, BadRequest):
                    raise  # our request is wrong: retrying it unchanged cannot help
                self.network.warning(f"telegram: getUpdates failed ({type(exc).__name__}); "
                                     "trying again")  # fmt: skip
                await asyncio.sleep(pause)  # a backoff, not a wait for an event
                pause = min(pause * 2, NETWORK_PAUSE_MAX)
                continue
            except RetryAfter as exc:
                wait = exc.retry_after  # seconds, unless PTB_TIMEDELTA is on (adapters.telegram)
                await asyncio.sleep(wait if isinstance(wait, int | float) else wait.total_seconds())
                continue
            pause = NETWORK_PAUSE
            for update in updates:
                if self.deliver is not None:
                    await self.deliver(update)
                else:
                    await self.queue.put(update)
            if updates:
                self.offset = max(update.update_id for update in updates) + 1

    async def confirm(self) -> None:
        """Mark what was taken as read, so the next start does not fetch it again."""
        if self.offset:
            with contextlib.suppress(TelegramError):
                await self.bot.get_updates(
                    offset=self.offset, timeout=0, allowed_updates=self.allowed_updates
                )
