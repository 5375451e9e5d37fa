"""Who may talk to the bot and how much: allow/deny lists, a per-user rate limit, a daily
token budget.

The allow/deny lists are a router middleware: they run before any route, so a refused
message never reaches an intent, a tool or the model. The rate limit is a token bucket in
Redis, shared by every process: a Lua script (atomic, Redis server time, so clocks of the
bot hosts do not matter) sent inside the turn's own load pipeline instead of a round trip
of its own. When Redis is away the limits fail open: the bot answers rather than refuse.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import datetime
from typing import Any

from core.config import Settings
from core.keys import KeyBuilder
from core.model import Message
from core.protocols import Handler, Queue, Responder
from core.sections import LimitsSettings
from core.streaming import reply
from core.usage import UsageBook, describe_wait, parse_int

log = logging.getLogger(__name__)

NOT_ALLOWED = "Sorry, I'm not available to you here. Ask an admin if you think you should be."

# KEYS[1]: the bucket (a hash: tokens, ts, taken). ARGV: capacity, refill per millisecond,
# cost, the take's token. Returns {1, 0} when the message may go on, else {0, milliseconds
# until it would}. A take sent again after a late reply (redis-py does) finds its token and
# takes nothing twice. `taken` keeps the last 16 tokens, newest first: the user's other takes
# stalled by the same late reply run between a take and its retry.
TOKEN_BUCKET = """
local taken = redis.call('HGET', KEYS[1], 'taken') or ''
if string.find(taken, ARGV[4], 1, true) then return {1, 0} end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
if allowed == 1 then
  redis.call('HSET', KEYS[1], 'taken', string.sub(ARGV[4] .. ' ' .. taken, 1, 16 * 17))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return {allowed, wait}
"""


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
    """Messages per minute per user: a token bucket of `burst` messages in Redis."""

    def __init__(self, keys: KeyBuilder, settings: LimitsSettings) -> None:
        self.keys = keys
        self.per_minute = settings.messages_per_minute
        self.capacity = settings.burst or max(1, math.ceil(self.per_minute))

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def queue_take(self, message: Message) -> Queue:
        """Takes one message from the user's bucket (one EVAL in the caller's pipeline)."""
        key = self.keys.bucket(message.platform, message.user.id)
        per_ms = self.per_minute / 60_000
        token = secrets.token_hex(8)
        return lambda pipe: pipe.eval(TOKEN_BUCKET, 1, key, self.capacity, repr(per_ms), 1, token)

    def refusal(self, raw: Any) -> str | None:
        """The reply when the bucket was empty, else None (also when Redis did not answer)."""
        if not isinstance(raw, list | tuple) or len(raw) != 2:
            return None
        allowed, wait_ms = parse_int(raw[0]), parse_int(raw[1])
        if allowed:
            return None
        rate = f"{self.per_minute:g} message{'s' if self.per_minute != 1 else ''} a minute"
        return (
            f"You're sending messages faster than I can answer (limit: {rate}). "
            f"Try again in {describe_wait(wait_ms / 1000)}."
        )


class TokenBudget:
    """Tokens per user and day; checked before the model is called."""

    def __init__(self, usage: UsageBook, settings: LimitsSettings) -> None:
        self.usage = usage
        self.daily = settings.daily_tokens

    @property
    def enabled(self) -> bool:
        return self.daily > 0

    def queue_used(self, message: Message, now: datetime) -> Queue:
        return self.usage.queue_today(message, now)

    def refusal(self, raw: Any, now: datetime) -> str | None:
        used = parse_int(raw)
        if used < self.daily:
            return None
        resets = self.usage.next_day(now)
        wait = (resets - now).total_seconds()
        return (
            f"You've used your daily budget of {self.daily:,} tokens ({used:,} today). "
            f"It resets at {resets:%H:%M} {self.usage.timezone}, in {describe_wait(wait)}."
        )
