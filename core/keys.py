"""Every Redis key the bot uses is built here, and only here.

A conversation's keys share a hash tag (`{...}`) so they land on one Redis Cluster slot and
can be read and written together in one pipeline.
"""

from __future__ import annotations

from urllib.parse import quote

from core.model import ContextKey


def _part(value: str) -> str:
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

    def seen(self, namespace: str, delivery_id: str) -> str:
        return f"{self.prefix}:seen:{_part(namespace)}:{_part(delivery_id)}"
