"""Token usage per user (per day and per month) and per conversation, kept in Redis hashes.

Counts come from the API's usage reports (`stream_options={"include_usage": true}`); a
server that sends none is estimated with the token counter. Recording rides in the turn's
save pipeline; reading today's total for the budget rides in the turn's load pipeline.
Days and months start at midnight in `limits.timezone`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.keys import KeyBuilder
from core.model import ContextKey, Message
from core.protocols import Queue, Store, Usage

DAY_TTL = 3 * 86400
MONTH_TTL = 70 * 86400

# KEYS: the user's day, the user's month, the conversation.
# ARGV: prompt, completion, total tokens; then each key's TTL; then the write token, left in
# the conversation's hash so a command sent again after a late reply adds nothing twice.
# One command instead of twelve (three HINCRBY and an EXPIRE per key) in the turn's MULTI.
RECORD = """
local token = ARGV[4 + #KEYS]
if redis.call('HGET', KEYS[#KEYS], 'written') == token then return 0 end
redis.call('HSET', KEYS[#KEYS], 'written', token)
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'prompt', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'completion', ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'total', ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[3 + i])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Totals:
    """Usage in one period."""

    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @classmethod
    def parse(cls, raw: Any) -> Totals:
        if not isinstance(raw, dict):
            return cls()
        values = {_text(k): _int(v) for k, v in raw.items()}
        return cls(values.get("prompt", 0), values.get("completion", 0))


class UsageBook:
    """Where usage is recorded and how it is read back."""

    def __init__(self, keys: KeyBuilder, timezone: str, conversation_ttl: int) -> None:
        self.keys = keys
        self.zone = ZoneInfo(timezone)
        self.timezone = timezone
        self.conversation_ttl = conversation_ttl

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

    def queue_today(self, message: Message, now: datetime) -> Queue:
        """Reads the user's total tokens today (for the budget check)."""
        key = self.keys.user_usage(message.platform, message.user.id, self.periods(now)[0])
        return lambda pipe: pipe.hget(key, "total")

    def queue_record(
        self, message: Message, conversation: ContextKey, usage: Usage, now: datetime
    ) -> list[Queue]:
        """The write (one script) that adds `usage` to the user's day, month and the
        conversation."""
        if usage.total <= 0:
            return []
        day, month = self.periods(now)
        platform, user = message.platform, message.user.id
        keys = (
            self.keys.user_usage(platform, user, day),
            self.keys.user_usage(platform, user, month),
            self.keys.usage(conversation),
        )
        args = (usage.prompt_tokens, usage.completion_tokens, usage.total,
                DAY_TTL, MONTH_TTL, self.conversation_ttl, secrets.token_hex(8))  # fmt: skip
        return [lambda pipe: pipe.eval(RECORD, len(keys), *keys, *args)]

    async def report(self, store: Store, message: Message) -> tuple[Totals, Totals]:
        """The user's usage today and this month (one round trip)."""
        day, month = self.periods(self.now())
        platform, user = message.platform, message.user.id
        keys = [self.keys.user_usage(platform, user, p) for p in (day, month)]
        raw = await store.read([_hgetall(key) for key in keys])
        return Totals.parse(raw[0]), Totals.parse(raw[1])


def _hgetall(key: str) -> Queue:
    return lambda pipe: pipe.hgetall(key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse_int(raw: Any) -> int:
    """A counter read from Redis (None, bytes or an error become 0)."""
    return _int(raw) if raw is not None else 0


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
