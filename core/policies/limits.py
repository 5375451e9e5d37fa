"""Who may talk to the bot and how much: allow/deny lists, a per-user rate limit, a daily
token budget.

The allow/deny lists are a router middleware: they run before any route, so a refused
message never reaches an intent, a tool or the model. The rate limit is a token bucket in
the store, shared by every process (taken in the store's clock, so the bot hosts' clocks do
not matter), taken in the turn's own read instead of a round trip of its own. When the store
is away the limits fail open: the bot answers rather than refuse.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from core.config import Settings
from core.model import Message
from core.policies.usage import UsageBook, describe_wait
from core.protocols import Handler, Responder
from core.sections import LimitsSettings
from core.storage import RateResult, RateTake, UserPeriod
from core.streaming.reply import reply

log = logging.getLogger(__name__)

NOT_ALLOWED = "Sorry, I'm not available to you here. Ask an admin if you think you should be."


class AccessControl:
    """Router middleware: the per-platform allow and deny lists of users and channels."""

    def __init__(self, handler: Handler, settings: Settings) -> None:
        self.handler = handler
        self.settings = settings

    def allowed(self, message: Message) -> bool:
        platform = self.settings.platforms.get(message.platform)
        user, channel = message.user.id, message.key.channel
        if user in platform.deny_users or (channel and channel in platform.deny_channels):
            return False
        if platform.allow_users and user not in platform.allow_users:
            return False
        return not (platform.allow_channels and channel not in platform.allow_channels)

    async def __call__(self, message: Message, responder: Responder) -> None:
        if not self.allowed(message):
            log.info("refused by the access lists: platform=%s", message.platform)
            await reply(responder, NOT_ALLOWED)
            return
        await self.handler(message, responder)


class RateLimiter:
    """Messages per minute per user: a token bucket of `burst` messages in the store."""

    def __init__(self, settings: LimitsSettings) -> None:
        self.per_minute = settings.messages_per_minute
        self.capacity = settings.burst or max(1, math.ceil(self.per_minute))

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def take(self, message: Message) -> RateTake:
        """One message from the user's bucket (taken in the turn's read)."""
        return RateTake(message.platform, message.user.id, self.capacity, self.per_minute)

    def refusal(self, result: RateResult | None) -> str | None:
        """The reply when the bucket was empty, else None (also when the store did not
        answer)."""
        if result is None or result.allowed:
            return None
        rate = f"{self.per_minute:g} message{'s' if self.per_minute != 1 else ''} a minute"
        return (
            f"You're sending messages faster than I can answer (limit: {rate}). "
            f"Try again in {describe_wait(result.wait_ms / 1000)}."
        )


class TokenBudget:
    """Tokens per user and day; checked before the model is called."""

    def __init__(self, usage: UsageBook, settings: LimitsSettings) -> None:
        self.usage = usage
        self.daily = settings.daily_tokens

    @property
    def enabled(self) -> bool:
        return self.daily > 0

    def today(self, message: Message, now: datetime) -> UserPeriod:
        return self.usage.today(message, now)

    def refusal(self, used: int | None, now: datetime) -> str | None:
        """The reply when today's usage reached the budget (None: unknown, fail open)."""
        if used is None or used < self.daily:
            return None
        resets = self.usage.next_day(now)
        wait = (resets - now).total_seconds()
        return (
            f"You've used your daily budget of {self.daily:,} tokens ({used:,} today). "
            f"It resets at {resets:%H:%M} {self.usage.timezone}, in {describe_wait(wait)}."
        )
