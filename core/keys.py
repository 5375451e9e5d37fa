"""Every Redis key the bot uses is built here, and only here.

A conversation's keys share a hash tag (`{...}`) so they land on one Redis Cluster slot and
can be read and written together in one pipeline.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote

from core.model import ContextKey


@lru_cache(maxsize=8192)
def _part(value: str) -> str:
    """A key segment, percent-escaped. Cached: a turn builds ~40 segments from the same few
    ids, and `quote` encodes and scans each anew."""
    return quote(value, safe="") or "-"


class KeyBuilder:
    """Redis key names under one prefix (one prefix per deployment or per test)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def conversation_id(self, key: ContextKey) -> str:
        """A stable, readable id of a conversation: platform:workspace:channel:thread:user."""
        parts = (key.platform, key.workspace, key.channel, key.thread, key.user)
        return ":".join(_part(part) for part in parts)

    def _base(self, key: ContextKey) -> str:
        return f"{self.prefix}:conv:{{{self.conversation_id(key)}}}"

    def history(self, key: ContextKey) -> str:
        return self._base(key) + ":history"

    def meta(self, key: ContextKey) -> str:
        """A hash: summary, persona, model."""
        return self._base(key) + ":meta"

    def lock(self, key: ContextKey) -> str:
        return self._base(key) + ":lock"

    def usage(self, key: ContextKey) -> str:
        """A hash: the conversation's token usage (prompt, completion, total)."""
        return self._base(key) + ":usage"

    def channel(self, key: ContextKey) -> str:
        """A hash: the channel's defaults (persona, model) set by an admin.

        Built from the message's own key, not the scoped one, so every conversation of the
        channel (per user, per thread) shares it.
        """
        parts = (key.platform, key.workspace, key.channel)
        return f"{self.prefix}:chan:" + ":".join(_part(part) for part in parts)

    def user_usage(self, platform: str, user: str, period: str) -> str:
        """A hash: one user's token usage in one period (`d2025-01-31`, `m2025-01`)."""
        return f"{self.prefix}:usage:{_part(platform)}:{_part(user)}:{period}"

    def bucket(self, platform: str, user: str) -> str:
        """A hash: one user's rate-limit token bucket (tokens, ts)."""
        return f"{self.prefix}:rate:{_part(platform)}:{_part(user)}"

    def cache(self, digest: str) -> str:
        """A string: a cached answer, by the digest of what it answers."""
        return f"{self.prefix}:cache:{digest}"

    def pending(self, key: ContextKey) -> str:
        """A sorted set: the conversation's messages claimed and not answered yet, by order."""
        return self._base(key) + ":pending"

    def seen_in(self, key: ContextKey, namespace: str, delivery_id: str) -> str:
        """A delivery's seen key in its conversation's slot (claimed with `pending`)."""
        return f"{self._base(key)}:seen:{_part(namespace)}:{_part(delivery_id)}"

    def owner(self, owner: str) -> str:
        """A process's heartbeat (the journal keeps it alive): gone when the process died."""
        return f"{self.prefix}:owner:{_part(owner)}"

    def seen(self, namespace: str, delivery_id: str) -> str:
        return f"{self.prefix}:seen:{_part(namespace)}:{_part(delivery_id)}"
