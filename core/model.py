"""The platform-free message model: what every adapter produces and the core consumes.

Adapters turn a Slack event, a Telegram update or a Discord message into a `Message`;
nothing below this line knows which platform it came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from urllib.parse import quote


class Scope(StrEnum):
    """How much of a `ContextKey` makes one conversation (set per platform in config).

    Threads and forum topics are always their own conversation; the scope decides what
    happens inside a channel (or a thread).
    """

    CHANNEL = "channel"  # everyone in the channel (or thread) shares one conversation
    USER_IN_CHANNEL = "user_in_channel"  # each user has their own conversation per channel
    USER = "user"  # one conversation per user across all channels of the platform


@dataclass(frozen=True, slots=True)
class ContextKey:
    """Where a message was said. Reduced by a `Scope` into the conversation it belongs to.

    `workspace` is the Slack team, the Discord guild (empty for DMs and Telegram);
    `thread` is the Slack thread ts, the Telegram forum topic or the Discord thread id.
    """

    platform: str
    channel: str
    user: str = ""
    workspace: str = ""
    thread: str = ""

    @property
    def id(self) -> str:
        """A stable, readable id of the conversation: platform:workspace:channel:thread:user,
        each part percent-escaped (tools see it; stores build their key names from it)."""
        return _conversation_id(self.platform, self.workspace, self.channel, self.thread, self.user)

    def scoped(self, scope: Scope) -> ContextKey:
        """The conversation this key belongs to under `scope`."""
        if scope is Scope.CHANNEL:
            return ContextKey(self.platform, self.channel, "", self.workspace, self.thread)
        if scope is Scope.USER:
            return ContextKey(self.platform, "", self.user, self.workspace, "")
        return self


@dataclass(frozen=True, slots=True)
class User:
    """Who wrote the message. `is_admin` comes from the admin list in config."""

    id: str
    name: str = ""
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """A command addressed to the bot: `/persona pirate` is `Command("persona", "pirate")`."""

    name: str
    args: str = ""


class MediaKind(StrEnum):
    """What the core makes of a file: an image the model sees, audio it transcribes, a
    document whose text it reads; anything else is only named."""

    IMAGE = "image"
    AUDIO = "audio"
    DOCUMENT = "document"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with the message, as the platform described it.

    `handle` is what the adapter needs to fetch the bytes (a Telegram file_id, Slack's
    `url_private_download`, a Discord CDN URL, a web upload's index): opaque to the core,
    given back to `MediaResponder.fetch`. `kind` is the adapter's guess from the platform's
    own type (a Telegram voice note is audio whatever its name); the core checks the bytes.
    """

    name: str
    mime_type: str = ""
    handle: str = ""
    size: int = 0  # as the platform reported it (0: unknown)
    kind: MediaKind = MediaKind.OTHER


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """A file the bot posts: a drawn picture, a spoken answer, an export."""

    data: bytes
    name: str
    mime_type: str
    kind: MediaKind
    caption: str = ""  # Markdown, shown with the file where the platform can


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a user turn. `data` is set while the turn is in flight; a stored turn
    keeps only `id`, the key of a TTL'd blob the store holds beside the conversation."""

    id: str
    mime_type: str = "image/jpeg"
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Message:
    """One incoming message, the same shape on every platform."""

    platform: str
    key: ContextKey
    user: User
    text: str
    message_id: str
    addressed: bool = True  # a mention, a DM, a reply to the bot or a command to it
    command: Command | None = None
    attachments: tuple[Attachment, ...] = ()
    # The platform's id of this delivery (Slack event_id, Telegram update_id, Discord message
    # id): a redelivery (a retry, another replica on the same token) is answered once.
    # Not journaled: a message answered again after a crash is not a redelivery.
    delivery_id: str = ""
    # How the platform orders the conversation's messages, as text that sorts that way
    # (zero-padded update_id, ts, snowflake): replicas answer one conversation in this order.
    order: str = ""
    follow_up: bool = False  # answered only in a conversation the bot is already part of
    private: bool = False  # a DM, a private chat, the web, the terminal: only they see answers
    # What the adapter needs to answer from another process (a worker, a recovery) that the
    # key does not say: a Discord slash command's interaction token and application id.
    # Opaque to the core; carried in the stream and the journal, never shown or logged.
    extras: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def thread(self) -> str:
        """The thread or forum topic the message is in, empty when none."""
        return self.key.thread


def kept(message: Message) -> Message:
    """The message as the journal and a pending approval keep it: without `extras` (a Discord
    interaction's token), whose original response is used by then; an answer taken up later
    goes to the channel, not over what was shown."""
    return dataclasses.replace(message, extras=()) if message.extras else message


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A tool call waiting for a person's yes: the adapter shows `text` (Markdown) with
    Approve and Deny buttons whose data carry `id`."""

    id: str
    text: str
    tool: str  # the tool's name, for platforms that show a title


@dataclass(frozen=True, slots=True)
class Decision:
    """A press of Approve or Deny, as the platform delivered it."""

    approval_id: str
    approve: bool
    user: User
    platform: str


@dataclass(frozen=True, slots=True)
class IntentMatch:
    """What a text gave: the intent's name, its entities, the text (and the message)."""

    intent: str
    entities: dict[str, str]
    text: str
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message the bot sent, as the adapter needs it to edit it later."""

    id: str
    channel: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=())


Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model asked to call; `arguments` is JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class Turn:
    """One entry of a conversation's history (or of one turn's tool exchange).

    Tool turns (`role="tool"`, and assistant turns carrying `tool_calls`) live only inside
    one chat turn's prompt; the history stores the user's text and the final answer.
    """

    role: Role
    content: str
    name: str = ""  # the speaker's display name in shared channels
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that asked for tools
    tool_call_id: str = ""  # tool turns: the call this result answers
    user: str = ""  # user turns: the speaker's platform id (never sent to the model); lets a
    # person's own turns be exported and erased from a shared conversation
    images: tuple[Image, ...] = ()  # user turns: pictures the model sees beside the text


@dataclass(slots=True)
class Conversation:
    """What the store knows about a conversation, read in one round trip."""

    history: list[Turn] = field(default_factory=list)
    summary: str = ""
    persona: str = ""  # empty: the channel's default, else the configured default
    model: str = ""  # empty: the channel's default, else the configured default
    channel_persona: str = ""  # the channel's default, set by an admin (`/persona default x`)
    channel_model: str = ""  # the channel's default, set by an admin (`/model default x`)
    voice: bool = False  # `/voice on`: answers also come as speech


def parse_command(text: str, bot_names: tuple[str, ...] = ()) -> Command | None:
    """Read `/name args` (or `/name@BotName args`) from the start of a text, else None.

    `bot_names` lists the names a `@suffix` may carry; a command addressed to another bot
    (`/help@OtherBot`) is not ours and gives None.
    """
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, args = stripped[1:].partition(" ")
    name, _, target = head.partition("@")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        return None
    if target and target.lower() not in {n.lower() for n in bot_names}:
        return None
    return Command(name.lower(), args.strip())


@lru_cache(maxsize=8192)
def id_part(value: str) -> str:
    """One segment of an id or key name, percent-escaped. Cached: a turn builds ~40 segments
    from the same few ids, and `quote` encodes and scans each anew."""
    return quote(value, safe="") or "-"


@lru_cache(maxsize=8192)
def _conversation_id(*parts: str) -> str:
    return ":".join(id_part(part) for part in parts)
