"""Discord channels and messages to the core's conversation keys and text.

A thread is its own conversation (its parent channel is the `channel`, the thread id the
`thread`); a DM channel is one conversation; a guild channel is one conversation under the
`channel` scope.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from adapters.discord_media import attachments_of
from core.model import ContextKey, Message, User, parse_command


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
    """`content` without mentions of the bot (removed until none is left: taking one out of
    `<@<@1>1>` joins the rest into another)."""
    pattern = re.compile(rf"<@!?{bot_id}>")
    while True:
        stripped = pattern.sub("", content)
        if stripped == content:
            return stripped.strip()
        content = stripped


def to_message(msg: Any, channel: Any, bot_id: int, admins: Collection[str]) -> Message:
    """The core's `Message` for a discord.py message the bot answers in `channel` (the
    message's own channel, or the thread opened for the answer). Its files come along as
    `attachments`, so a picture or a voice message without a word is a message too."""
    content = msg.content if isinstance(msg.content, str) else ""  # discord.py keeps a null
    text = strip_bot_mention(content, bot_id)
    author = str(msg.author.id)
    return Message(
        platform="discord",
        key=conversation_key(channel, author),
        user=User(author, msg.author.display_name, is_admin=author in admins),
        text=text,
        message_id=str(msg.id),
        command=parse_command(text),
        attachments=attachments_of(msg),
    )
