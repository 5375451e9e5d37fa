"""A message's files made into what the model reads: image parts, transcripts, document text.

The adapter fetches bytes (`MediaResponder.fetch`, with the platform's auth and the address
rules); everything after that is here and the same on every platform: the real type is
checked from the bytes, images are scaled down, voice is transcribed, documents become text
cut to their share of the token budget. A file that cannot be read gets one short sentence
back to the user; the rest of the message is still answered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from core.llm.tokens import TokenCounter
from core.media.documents import DocumentText, Unreadable, read_document
from core.media.images import NotAnImage, prepare_image
from core.media.sniff import AUDIO_EXTENSIONS, audio_type, image_type
from core.model import Attachment, Image, MediaKind, Message
from core.protocols import FetchError, LLMError, MediaModel, MediaResponder, Responder
from core.sections import MediaSettings

log = logging.getLogger(__name__)

MAX_FILES = 10  # per message; more are named, not read
HEARD_CHARS = 200  # the quoted line of what was heard
CPU_AT_ONCE = 2  # images decoded or documents parsed at once, in this process


@dataclass(slots=True)
class Gathered:
    """A message's text with its files read in, and what to tell the user about them."""

    text: str
    images: list[Image] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)  # transcripts, quoted back first
    problems: list[str] = field(default_factory=list)  # one sentence per file not read

    @property
    def empty(self) -> bool:
        return not self.text.strip() and not self.images


@dataclass(frozen=True, slots=True)
class _Part:
    """One file's contribution."""

    text: str = ""
    image: Image | None = None
    heard: str = ""
    problem: str = ""


class MediaReader:
    """Reads the files of a message for the chat turn."""

    def __init__(
        self,
        settings: MediaSettings,
        media: MediaModel | None,
        counter: TokenCounter,
        *,
        transcription_model: str,
        document_tokens: int,
    ) -> None:
        self.settings = settings
        self.media = media
        self.counter = counter
        self.transcription_model = transcription_model
        self.document_tokens = document_tokens
        # Decoding and parsing run in threads; bounded, so a burst of files cannot fill the
        # default thread pool that DNS lookups share, nor hold a gigabyte of pixels.
        self._cpu = asyncio.Semaphore(CPU_AT_ONCE)

    async def read(self, message: Message, responder: Responder) -> Gathered:
        files = message.attachments
        if not files:
            return Gathered(message.text)
        if not self.settings.enabled or not isinstance(responder, MediaResponder):
            names = ", ".join(a.name for a in files)
            return Gathered(f"{message.text}\n\n[attached: {names}]".strip())
        parts = await asyncio.gather(*(self._one(a, responder) for a in files[:MAX_FILES]))
        gathered = Gathered(message.text.strip())
        texts = [gathered.text] if gathered.text else []
        for part in parts:
            if part.text:
                texts.append(part.text)
            if part.image is not None:
                gathered.images.append(part.image)
            if part.heard:
                gathered.heard.append(part.heard)
            if part.problem:
                gathered.problems.append(part.problem)
        if len(files) > MAX_FILES:
            skipped = ", ".join(a.name for a in files[MAX_FILES:])
            gathered.problems.append(f"I read the first {MAX_FILES} files only, not {skipped}.")
        gathered.text = "\n\n".join(texts)
        return gathered

    async def _one(self, attachment: Attachment, responder: MediaResponder) -> _Part:
        try:
            return await self._read(attachment, responder)
        except Exception as exc:  # one odd file must not lose the message or its other files
            log.error("reading an attachment failed: %s", type(exc).__name__)
            return _Part(problem=f"I couldn't read {_quoted(attachment.name)}.")

    async def _read(self, attachment: Attachment, responder: MediaResponder) -> _Part:
        name = _quoted(attachment.name)
        if attachment.kind is MediaKind.OTHER:
            return _Part(
                f"[attached: {attachment.name}, not read]",
                problem=f"I can read images, voice notes, PDFs and text files, not {name}.",
            )
        limit = self.settings.max_bytes
        if attachment.size > limit:
            return _Part(problem=f"{name} is larger than {_mb(limit)}, so I did not read it.")
        try:
            data = await responder.fetch(attachment, limit)
        except FetchError as exc:
            log.warning("could not fetch an attachment: %s", exc)
            return _Part(problem=f"I couldn't download {name}: {exc}.")
        if attachment.kind is MediaKind.IMAGE or (
            attachment.kind is MediaKind.DOCUMENT and image_type(data)
        ):
            return await self._image(attachment, data)
        if attachment.kind is MediaKind.AUDIO:
            return await self._audio(attachment, data)
        return await self._document(attachment, data)

    async def _image(self, attachment: Attachment, data: bytes) -> _Part:
        try:
            async with self._cpu:
                scaled, mime = await asyncio.to_thread(
                    prepare_image, data, self.settings.image_side
                )
        except NotAnImage:
            return _Part(problem=f"{_quoted(attachment.name)} is not an image I can read.")
        image = Image(secrets.token_hex(8), mime, scaled)
        return _Part(f"[image: {attachment.name}]", image=image)

    async def _audio(self, attachment: Attachment, data: bytes) -> _Part:
        name = _quoted(attachment.name)
        mime = audio_type(data)
        if not mime:
            return _Part(problem=f"{name} is not audio I can transcribe.")
        if self.media is None:
            return _Part(problem=f"I can't transcribe {name} here.")
        filename = _with_extension(attachment.name, AUDIO_EXTENSIONS[mime])
        try:
            heard = await self.media.transcribe(
                data, name=filename, mime_type=mime, model=self.transcription_model
            )
        except LLMError as exc:
            log.warning("transcription failed: %s", exc)
            return _Part(problem=f"I couldn't transcribe {name} just now. Please try again.")
        heard = heard.strip()
        if not heard:
            return _Part(problem=f"I heard nothing I could make out in {name}.")
        return _Part(heard, heard=heard)

    async def _document(self, attachment: Attachment, data: bytes) -> _Part:
        name = _quoted(attachment.name)
        enough = self.document_tokens * 16  # characters: more than the budget will keep
        try:
            async with self._cpu:
                document = await asyncio.to_thread(
                    read_document, data, self.settings.max_pages, enough
                )
                text = await asyncio.to_thread(self._document_text, attachment.name, document)
        except Unreadable as exc:
            return _Part(problem=f"I couldn't read {name}: {exc}.")
        return _Part(text)

    def _document_text(self, name: str, document: DocumentText) -> str:
        notes = []
        text = document.text[: self.document_tokens * 16]  # counting all of it costs seconds
        if document.read_pages < document.pages:
            notes.append(f"pages 1-{document.read_pages} of {document.pages}")
        if self.counter.text(text) > self.document_tokens:
            text = _cut(text, self.document_tokens, self.counter)
            notes.append("cut to fit: the rest of the text was left out")
        about = f" ({'; '.join(notes)})" if notes else ""
        return f"[document: {name}{about}]\n{text}\n[end of {name}]"


def heard_line(heard: list[str]) -> str:
    """The quoted line an answer to a voice note starts with."""
    said = " ".join(heard)
    if len(said) > HEARD_CHARS:
        said = said[: HEARD_CHARS - 1].rstrip() + "…"
    return f"> 🎤 _{said}_"


def _cut(text: str, tokens: int, counter: TokenCounter) -> str:
    """The longest start of `text` within `tokens` (by bisection on characters)."""
    low, high = 0, min(len(text), tokens * 16)  # a token is rarely 16 characters long
    while low < high:
        middle = (low + high + 1) // 2
        if counter.text(text[:middle]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip()


def _with_extension(name: str, extension: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem or 'audio'}.{extension}"


def _quoted(name: str) -> str:
    return f"“{name}”"


def _mb(size: int) -> str:
    return f"{size / 1_000_000:g} MB"
