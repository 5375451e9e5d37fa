"""Discord's files: attachments as the core's `Attachment`s, the CDN as the only place the
bot fetches from, and a bot's file as the `discord.File` that discord.py uploads.

An attachment's `url` is a signed CDN link (`https://cdn.discordapp.com/attachments/…?ex=…`)
that needs no token, so nothing is sent with the GET: the bot token never leaves for a host
named by an event. The links expire (about a day), so a fetch long after the message fails
with a `FetchError` like any other download.
https://discord.com/developers/docs/reference#signed-attachment-cdn-urls
"""

from __future__ import annotations

import io
import mimetypes

import discord

from adapters.file_fetch import FileFetcher, host_of
from core.media.kinds import kind_of as media_kind
from core.model import Attachment, MediaKind, OutgoingFile

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
CAPTION_LIMIT = 2000  # a caption is the message's content


def make_fetcher(api_url: str | None) -> FileFetcher:
    """Reads Discord's CDN only, and the configured API's host (a proxy, or a test's fake)."""
    return FileFetcher(CDN_HOSTS, trusted=(host_of(api_url),) if api_url else ())


def mime_of(content_type: str, filename: str) -> str:
    """Discord's content type without parameters (`text/plain; charset=utf-8`), or a guess
    from the name when Discord sent none."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime or (mimetypes.guess_type(filename)[0] or "").lower()


def kind_of(mime: str, filename: str, *, voice: bool = False) -> MediaKind:
    """What the core makes of a file, from its type and name: a voice message is audio
    whatever its type; source code and data files are documents."""
    return MediaKind.AUDIO if voice else media_kind(mime, filename)


def attachments_of(msg: discord.Message) -> tuple[Attachment, ...]:
    """The files of a discord.py message. A voice message is flagged on the message
    (`IS_VOICE_MESSAGE`) and its one attachment carries a duration and a waveform.
    discord.py keeps the payload's values as sent, so a field of the wrong type leaves that
    file out (or the flag unread) instead of failing the message."""
    voice_message = isinstance(msg.flags.value, int) and msg.flags.voice
    found: list[Attachment] = []
    for item in msg.attachments:
        name, url = item.filename, item.url
        if not (isinstance(name, str) and isinstance(url, str) and url):
            continue  # nothing to name or to fetch
        mime = mime_of(item.content_type if isinstance(item.content_type, str) else "", name)
        size = item.size if isinstance(item.size, int) and item.size > 0 else 0
        voice = voice_message or item.is_voice_message()
        found.append(Attachment(name, mime, url, size, kind_of(mime, name, voice=voice)))
    return tuple(found)


def to_discord_file(file: OutgoingFile) -> discord.File:
    """The upload discord.py sends as `files[0]` of a multipart message."""
    return discord.File(io.BytesIO(file.data), filename=file.name or "file")


def caption_of(file: OutgoingFile) -> str:
    """The message's content: the caption as written (Discord renders Markdown), cut to
    Discord's limit; empty for none (a message with a file needs no text)."""
    caption = file.caption.strip()
    if len(caption) > CAPTION_LIMIT:
        caption = caption[: CAPTION_LIMIT - 1] + "…"
    return caption
