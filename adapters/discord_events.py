"""Discord channels and messages to the core's conversation keys and text.

A thread is its own conversation (its parent channel is the `channel`, the thread id the
`thread`); a DM channel is one conversation; a guild channel is one conversation under the
`channel` scope.
"""

from __future__ import annotations

import re
from typing import Any

from core.model import ContextKey


def conversation_key(channel: Any, user: str) -> ContextKey:
    """The key of a message from `user` in `channel` (a discord.py channel or thread)."""
    guild = getattr(channel, "guild", None)
    workspace = str(guild.id) if guild is not None else ""
    parent_id = getattr(channel, "parent_id", None)
    if parent_id is not None and getattr(channel, "owner_id", None) is not None:
        return ContextKey("discord", channel=str(parent_id), user=user, workspace=workspace,
                          thread=str(channel.id))  # fmt: skip
    return ContextKey("discord", channel=str(channel.id), user=user, workspace=workspace)


def strip_bot_mention(content: str, bot_id: int) -> str:
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()
