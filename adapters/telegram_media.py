"""Telegram files: what an update carries (`attachments_of`), fetching one (`fetch_file`),
and how a file the bot posts is sent (`upload_method`, `caption_of`).

Downloads go through PTB's own `getFile` and `File.download_as_bytearray`, from the bot's
`base_file_url` (`<TELEGRAM_API_URL>/file/bot<token>/<file_path>`), so a self-hosted Bot API
server serves them too. https://core.telegram.org/bots/api#getfile
"""

from __future__ import annotations

import mimetypes
from typing import Any, Final

from telegram import Message as TgMessage
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError

from adapters.file_fetch import too_large
from adapters.telegram_format import to_telegram_html, utf16_len, visible_text
from adapters.telegram_http import ResponseTooLarge
from core.media.kinds import kind_of
from core.model import Attachment, MediaKind, OutgoingFile
from core.protocols import FetchError

CAPTION_LIMIT: Final = 1024  # UTF-16 units after entity parsing (sendPhoto, sendDocument…)
# What Telegram shows as a photo or plays as a voice note; anything else goes as a document.
# https://core.telegram.org/bots/api#sendphoto, https://core.telegram.org/bots/api#sendvoice
PHOTO_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/webp"})
VOICE_TYPES: Final = frozenset({"audio/ogg", "audio/opus", "audio/mpeg", "audio/mp4",
                                "audio/x-m4a", "audio/m4a"})  # fmt: skip


def attachments_of(tg: TgMessage) -> tuple[Attachment, ...]:
    """The files of a message: the largest size of a photo, a document, a voice note, an
    audio file or a video. The handle is the file_id, which `fetch_file` turns into bytes."""
    found: list[Attachment] = []
    if tg.photo:
        largest = max(tg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        found.append(Attachment("photo.jpg", "image/jpeg", largest.file_id,
                                largest.file_size or 0, MediaKind.IMAGE))  # fmt: skip
    if tg.document is not None:
        doc = tg.document
        name = doc.file_name or "document"
        mime = doc.mime_type or mimetypes.guess_type(name, strict=False)[0] or ""
        found.append(Attachment(name, mime, doc.file_id, doc.file_size or 0, kind_of(mime, name)))
    if tg.voice is not None:
        voice = tg.voice
        found.append(Attachment("voice.ogg", voice.mime_type or "audio/ogg", voice.file_id,
                                voice.file_size or 0, MediaKind.AUDIO))  # fmt: skip
    if tg.audio is not None:
        audio = tg.audio
        mime = audio.mime_type or "audio/mpeg"
        name = audio.file_name or "audio" + (mimetypes.guess_extension(mime) or "")
        found.append(Attachment(name, mime, audio.file_id, audio.file_size or 0, MediaKind.AUDIO))
    if tg.video is not None:
        video = tg.video
        found.append(Attachment(video.file_name or "video.mp4", video.mime_type or "video/mp4",
                                video.file_id, video.file_size or 0, MediaKind.OTHER))  # fmt: skip
    return tuple(found)


async def fetch_file(bot: Any, attachment: Attachment, max_bytes: int) -> bytes:
    """The bytes of `attachment` (its handle is a file_id), at most `max_bytes` of them.

    Refused unread when Telegram announces more; refused when more arrive. A `file_path`
    that is not under the bot's file URL is refused too: PTB reads a path that names a file
    on this machine from the disk (its local mode), and we never run in local mode."""
    if attachment.size > max_bytes:
        raise FetchError(too_large(max_bytes))
    try:
        file = await bot.get_file(attachment.handle)
        if file.file_size is not None and file.file_size > max_bytes:
            raise FetchError(too_large(max_bytes))
        if not str(file.file_path or "").startswith(bot.base_file_url + "/"):
            raise FetchError("Telegram gave no download path for the file")
        data = await file.download_as_bytearray()
    except ResponseTooLarge:
        raise FetchError(too_large(max_bytes)) from None
    except BadRequest as exc:
        if "too big" in exc.message:  # the cloud Bot API serves bots files up to 20 MB
            raise FetchError("the file is larger than Telegram lets bots download") from None
        raise FetchError("Telegram refused the file (BadRequest)") from None
    except InvalidToken:  # what PTB makes of a 404 from the file server (an expired path)
        raise FetchError("Telegram refused the file (not found)") from None
    except NetworkError as exc:
        raise FetchError(f"download failed ({type(exc).__name__})") from None
    except TelegramError as exc:  # the message may quote the server; the type is enough
        raise FetchError(f"Telegram refused the file ({type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise FetchError(too_large(max_bytes))
    return bytes(data)


def upload_method(file: OutgoingFile) -> str:
    """`photo`, `voice` or `document`: the Bot API method (send_<it>) and its file field."""
    mime = file.mime_type.split(";", 1)[0].strip().lower()
    if file.kind is MediaKind.IMAGE and mime in PHOTO_TYPES:
        return "photo"
    if file.kind is MediaKind.AUDIO and mime in VOICE_TYPES:
        return "voice"
    return "document"


def caption_of(markdown: str) -> tuple[str, bool]:
    """The caption as our HTML and True, or, when that shows more than Telegram's 1024
    units, its visible text cut to fit (with an ellipsis) and False (plain text)."""
    if not markdown.strip():
        return "", False
    rendered = to_telegram_html(markdown)
    shown = visible_text(rendered)
    if utf16_len(shown) <= CAPTION_LIMIT:
        return rendered, True
    return cut(shown, CAPTION_LIMIT - 1) + "…", False


def cut(text: str, limit: int) -> str:
    """The longest start of `text` within `limit` UTF-16 units."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            return text[:index]
    return text
