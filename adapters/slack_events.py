"""Slack events to the core's `Message`: which events are for the bot, which conversation.

A thread is one conversation (its `thread_ts`); a mention at the top of a channel starts a
thread under itself. DMs are one conversation (or one per thread with `dm_threads`).
Files come in `files` (https://docs.slack.dev/reference/objects/file-object): on an
`app_mention`, a `file_share` message, an assistant thread's message.
https://api.slack.com/events/app_mention, https://api.slack.com/events/message
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.media.kinds import kind_of as media_kind
from core.model import (
    Attachment,
    Command,
    ContextKey,
    MediaKind,
    Message,
    User,
    parse_command,
)

# Subtypes that carry a user's new words; every other subtype (edits, deletions, joins,
# topic changes, bot_message…) is ignored.
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
SUBCOMMANDS = {"reset", "help", "persona", "model", "usage", "mydata", "image", "voice"}
# Files Slack no longer serves: deleted ones, and those past a free workspace's history limit
GONE_MODES = {"tombstone", "hidden_by_limit"}
# Slack's own `filetype` for documents and text (a snippet's language, source code), used when
# the mimetype says nothing useful (`application/octet-stream`, or none)
DOCUMENT_FILETYPES = {
    "text", "csv", "tsv", "markdown", "json", "yaml", "xml", "html", "css", "python",
    "javascript", "typescript", "shell", "sql", "go", "rust", "java", "kotlin", "c", "cpp",
    "csharp", "ruby", "php", "swift", "diff", "toml", "ini", "pdf", "post",
}  # fmt: skip


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
        attachments=attachments_of(event),
    )


def command_from_slash(text: str) -> Command:
    """`/ask reset` is /reset, `/ask persona x` is /persona x; anything else is a question."""
    head, _, rest = text.strip().partition(" ")
    if head.lower() in SUBCOMMANDS:
        return Command(head.lower(), rest.strip())
    return Command("ask", text.strip())


def kind_of(file: Mapping[str, Any]) -> MediaKind:
    """What the core makes of a Slack file, from its mimetype (and Slack's own subtype and
    filetype: a clip recorded in Slack is `slack_audio` whatever its container)."""
    if file.get("subtype") == "slack_audio" or file.get("media_display_type") == "audio":
        return MediaKind.AUDIO
    kind = media_kind(str(file.get("mimetype") or ""), str(file.get("name") or ""))
    if kind is MediaKind.OTHER and str(file.get("filetype") or "").lower() in DOCUMENT_FILETYPES:
        return MediaKind.DOCUMENT
    return kind


def attachments_of(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The files a message event carries, as the core's attachments. A file shared from
    another organisation may come as only an id (`file_access: check_file_info`): it keeps
    an empty handle, and fetching it fails with a reason."""
    files = event.get("files")
    if not isinstance(files, list):
        return ()
    found = []
    for file in files:
        if not isinstance(file, dict) or str(file.get("mode")) in GONE_MODES:
            continue
        size = file.get("size")
        found.append(
            Attachment(
                name=str(file.get("name") or file.get("title") or file.get("id") or "file"),
                mime_type=str(file.get("mimetype") or ""),
                handle=str(file.get("url_private_download") or file.get("url_private") or ""),
                size=size if isinstance(size, int) and size > 0 else 0,
                kind=kind_of(file),
            )
        )
    return tuple(found)
