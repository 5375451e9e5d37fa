"""Telegram updates to the core's `Message`: who is addressed, which conversation.

In private chats every text is for the bot. In groups only a mention of the bot (a
`mention` or `text_mention` entity; offsets are UTF-16, which PTB's `parse_entities`
handles), a reply to one of the bot's messages, or a command addressed to it. Forum topics
(`message_thread_id` on topic messages) are their own conversations.

A photo, document, voice note or audio file comes as `Message.attachments`, its caption as
the text (a caption mentions or commands the bot as a text does). Without a caption it is
addressed as a text would be: in a private chat, or as a reply to the bot in a group.

A press of an approval button is a `callback_query` update: `to_decision` reads it into the
core's `Decision` (adapters/telegram_approvals.py has the buttons).
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import Message as TgMessage
from telegram import MessageEntity, Update

from adapters.telegram_approvals import parse
from adapters.telegram_media import attachments_of
from core.model import Command, ContextKey, Decision, Message, User, parse_command


@dataclass(frozen=True, slots=True)
class BotIdentity:
    id: int
    username: str


def to_message(
    update: Update, bot: BotIdentity, admins: frozenset[str] = frozenset()
) -> Message | None:
    """The core message for `update`, or None when it is not for the bot."""
    tg = update.message
    if tg is None or tg.from_user is None or tg.from_user.is_bot:
        return None  # edits, channel posts, service messages, other bots and ourselves
    text = tg.text or tg.caption or ""
    attachments = attachments_of(tg)
    if not text and not attachments:
        return None  # stickers, locations, polls, service messages
    private = tg.chat.type == "private"
    command = _command(tg, text, bot)
    if text.startswith("/") and command is None and not private:
        return None  # a command for another bot
    mentioned = _mentions(tg, bot)
    replied = (
        tg.reply_to_message is not None
        and tg.reply_to_message.from_user is not None
        and tg.reply_to_message.from_user.id == bot.id
    )
    if not (private or mentioned or replied or command is not None):
        return None
    if mentioned and command is None:
        text = _strip_mention(text, bot.username)
    thread = str(tg.message_thread_id) if tg.is_topic_message and tg.message_thread_id else ""
    sender = str(tg.from_user.id)
    return Message(
        platform="telegram",
        key=ContextKey("telegram", channel=str(tg.chat.id), user=sender, thread=thread),
        user=User(sender, tg.from_user.full_name, is_admin=sender in admins),
        text=text,
        message_id=str(tg.message_id),
        addressed=True,
        command=command,
        attachments=attachments,
        private=private,
    )


def to_decision(update: Update) -> Decision | None:
    """The press in a `callback_query` update; None when the update is not a press of one
    of our buttons. Whoever pressed is no admin here: the core
    checks `platforms.telegram.admins` itself."""
    query = update.callback_query
    pressed = parse(query.data) if query is not None else None
    if query is None or pressed is None:
        return None
    approval_id, approve = pressed
    who = query.from_user
    user = User(str(who.id), who.full_name or who.username or "", is_admin=False)
    return Decision(approval_id, approve, user, "telegram")


def _command(tg: TgMessage, text: str, bot: BotIdentity) -> Command | None:
    if not text.startswith("/"):
        return None
    return parse_command(text, bot_names=(bot.username,))


def _mentions(tg: TgMessage, bot: BotIdentity) -> bool:
    wanted = "@" + bot.username.lower()
    entities = tg.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
    if not entities and tg.caption:
        entities = tg.parse_caption_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
    for entity, value in entities.items():
        if entity.type == MessageEntity.MENTION and value.lower() == wanted:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot.id:
            return True
    return False


def _strip_mention(text: str, username: str) -> str:
    lowered, mention = text.lower(), "@" + username.lower()
    at = lowered.find(mention)
    while at != -1:
        text = text[:at] + text[at + len(mention) :]
        lowered = text.lower()
        at = lowered.find(mention)
    return text.replace("  ", " ").strip()
