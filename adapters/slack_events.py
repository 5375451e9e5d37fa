"""Slack events to the core's `Message`: which events are for the bot, which conversation.

A thread is one conversation (its `thread_ts`); a mention at the top of a channel starts a
thread under itself. DMs are one conversation (or one per thread with `dm_threads`).
https://api.slack.com/events/app_mention, https://api.slack.com/events/message
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.model import Command, ContextKey, Message, User, parse_command

# Subtypes that carry a user's new words; every other subtype (edits, deletions, joins,
# topic changes, bot_message…) is ignored.
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
SUBCOMMANDS = {"reset", "help", "persona", "model", "usage", "mydata"}


@dataclass(frozen=True, slots=True)
class BotIdentity:
    user_id: str
    bot_id: str
    team_id: str


def is_ignored(event: dict[str, Any], bot: BotIdentity, allow_bots: bool) -> bool:
    """Own messages, other bots (unless allowed), edits, deletions, joins and the like."""
    if event.get("subtype") not in ANSWERED_SUBTYPES:
        return True
    if event.get("user") == bot.user_id or event.get("bot_id") == bot.bot_id:
        return True
    if event.get("bot_id") or event.get("bot_profile"):
        return not allow_bots
    return not event.get("user")


def strip_mentions(text: str, bot_user: str) -> str:
    return re.sub(rf"<@{re.escape(bot_user)}(\|[^>]*)?>", "", text).strip()


def mentions_bot(text: str, bot_user: str) -> bool:
    return f"<@{bot_user}" in text


def to_message(
    event: dict[str, Any], bot: BotIdentity, *, thread: str, admins: frozenset[str] = frozenset()
) -> Message:
    """The core message for an event already known to be for the bot."""
    text = strip_mentions(str(event.get("text", "")), bot.user_id)
    user = str(event.get("user") or event.get("bot_id") or "")
    team = str(event.get("team") or bot.team_id)
    return Message(
        platform="slack",
        key=ContextKey(
            "slack", channel=str(event["channel"]), user=user, workspace=team, thread=thread
        ),
        user=User(user, user, is_admin=user in admins),
        text=text,
        message_id=str(event.get("ts", "")),
        addressed=True,
        command=parse_command(text),
        private=event.get("channel_type") == "im",  # the bot's DM
    )


def command_from_slash(text: str) -> Command:
    """`/ask reset` is /reset, `/ask persona x` is /persona x; anything else is a question."""
    head, _, rest = text.strip().partition(" ")
    if head.lower() in SUBCOMMANDS:
        return Command(head.lower(), rest.strip())
    return Command("ask", text.strip())
