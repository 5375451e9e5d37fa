"""Files on the web channel: attachments that come with a message, files the bot sends back.

Both travel as base64 inside the JSON the channel already speaks (the POST body, the WebSocket
frame, the server-sent event), so one message stays one request or frame, and a retry resends
the files with its id. The bytes of an upload live only in the turn's responder, keyed by the
attachment's handle: a `Message` is journaled to Redis and carries only the descriptor.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.media.kinds import kind_of
from core.model import Attachment, OutgoingFile

MAX_FILES = 4  # attachments on one message
MAX_NAME = 255
FIELDS_ROOM = 1024  # a file's name and type, as JSON, beside its data
MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class TooLarge(ValueError):
    """A file over `media.max_bytes` (a POST answers 413)."""


@dataclass(frozen=True, slots=True)
class Uploads:
    """One message's files: the descriptors for the core, the bytes for the responder."""

    attachments: tuple[Attachment, ...] = ()
    data: dict[str, bytes] = field(default_factory=dict)  # handle -> bytes


def encoded_size(size: int) -> int:
    """Base64 characters for `size` bytes."""
    return 4 * ((size + 2) // 3)


def body_limit(max_body: int, max_bytes: int) -> int:
    """What a request body or a frame may hold: the message itself (`max_body`) and room for
    `MAX_FILES` files of `max_bytes` as base64."""
    return max_body + MAX_FILES * (encoded_size(max_bytes) + FIELDS_ROOM)


def files_size(body: Any) -> int:
    """Characters of file data in a message (counted against the files' own bound, so the
    rest of the body keeps `max_body`)."""
    files = body.get("attachments") if isinstance(body, dict) else None
    if not isinstance(files, list):
        return 0
    return sum(
        len(f["data"])
        for f in files[:MAX_FILES]
        if isinstance(f, dict) and isinstance(f.get("data"), str)
    )


def read_attachments(raw: Any, max_bytes: int) -> Uploads:
    """`[{"name", "mime_type", "data": <base64>}]` -> Uploads; ValueError says what is wrong
    (TooLarge for a file over `max_bytes`)."""
    if raw is None:
        return Uploads()
    if not isinstance(raw, list):
        raise ValueError('attachments: a list of {"name", "mime_type", "data": <base64>}')
    if len(raw) > MAX_FILES:
        raise ValueError(f"attachments: at most {MAX_FILES} files on one message")
    attachments: list[Attachment] = []
    data: dict[str, bytes] = {}
    for i, item in enumerate(raw):
        where = f"attachments[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f'{where}: an object {{"name", "mime_type", "data"}}')
        name, mime, encoded = item.get("name", ""), item.get("mime_type", ""), item.get("data")
        if not isinstance(name, str) or not isinstance(mime, str):
            raise ValueError(f"{where}: name and mime_type are strings")
        if not isinstance(encoded, str):
            raise ValueError(f"{where}.data: the file's bytes as base64")
        if len(encoded) > encoded_size(max_bytes):
            raise TooLarge(f"{where}: a file may have at most {max_bytes} bytes")
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}.data is not valid base64") from None
        if not content:
            raise ValueError(f"{where} is empty")
        if len(content) > max_bytes:
            raise TooLarge(f"{where}: a file may have at most {max_bytes} bytes")
        name = _clean_name(name)
        mime = _clean_mime(mime, name, where)
        handle = f"upload-{uuid.uuid4().hex}"
        attachments.append(Attachment(name, mime, handle, len(content), kind_of(mime, name)))
        data[handle] = content
    return Uploads(tuple(attachments), data)


def file_event(file: OutgoingFile) -> dict[str, str]:
    """A file the bot sends, as the `file` event's data (a frame adds its type and id)."""
    return {
        "name": file.name,
        "mime_type": file.mime_type,
        "kind": file.kind.value,
        "data": base64.b64encode(file.data).decode("ascii"),
        "caption": file.caption,
    }


def _clean_name(name: str) -> str:
    """The last part of a path, without control characters, bounded."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:MAX_NAME] or "file"


def _clean_mime(mime: str, name: str, where: str) -> str:
    """The bare type (no parameters), lower case; guessed from the name when none is given
    (browsers give none for many source files)."""
    mime = mime.partition(";")[0].strip().lower()
    if not mime:
        return mimetypes.guess_type(name, strict=False)[0] or ""
    if len(mime) > 127 or not MIME.fullmatch(mime):
        raise ValueError(f"{where}.mime_type: a media type such as image/png")
    return mime
