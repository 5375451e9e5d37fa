"""Token usage per user (per day and per month) and per conversation.

Counts come from the API's usage reports (`stream_options={"include_usage": true}`); a
server that sends none is estimated with the token counter. Recording rides in the turn's
write (`TurnWrites.usage`); reading today's total for the budget rides in its read. Days and
months start at midnight in `limits.timezone`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from core.model import Message
from core.protocols import Usage
from core.storage import MONTH_TTL, Store, Totals, UsageRecord, UserPeriod

__all__ = ["Totals", "UsageBook", "describe_wait"]


class UsageBook:
    """Which periods usage is recorded in, and how it is read back."""

    def __init__(self, timezone: str, *, month_ttl: int = MONTH_TTL) -> None:
        self.zone = ZoneInfo(timezone)
        self.timezone = timezone
        self.month_ttl = month_ttl  # `privacy.profile_ttl_days`

    def now(self) -> datetime:
        return datetime.now(self.zone)

    def periods(self, now: datetime) -> tuple[str, str]:
        """The day and month ids of `now` in the configured zone."""
        local = now.astimezone(self.zone)
        return f"d{local:%Y-%m-%d}", f"m{local:%Y-%m}"

    def next_day(self, now: datetime) -> datetime:
        """When today's budget resets: the next local midnight."""
        local = now.astimezone(self.zone)
        tomorrow = (local + timedelta(days=1)).date()
        return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=self.zone)

    def today(self, message: Message, now: datetime) -> UserPeriod:
        """The user's counters today (for the budget check)."""
        return UserPeriod(message.platform, message.user.id, self.periods(now)[0])

    def record(
        self, message: Message, usage: Usage, now: datetime, *, images: int = 0
    ) -> UsageRecord | None:
        """`usage` (and pictures drawn) added to the user's day and month and to the
        conversation, once."""
        if usage.total <= 0 and not images:
            return None
        day, month = self.periods(now)
        return UsageRecord(
            message.platform, message.user.id, day, month, usage,
            images=images, month_ttl=self.month_ttl,
        )  # fmt: skip

    async def report(self, store: Store, message: Message) -> tuple[Totals, Totals]:
        """The user's usage today and this month (one round trip)."""
        day, month = self.periods(self.now())
        platform, user = message.platform, message.user.id
        today, this_month = await store.usage(
            [UserPeriod(platform, user, day), UserPeriod(platform, user, month)]
        )
        return today, this_month


def describe_wait(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 5 min`: how long until something resets."""
    seconds = max(1, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
