"""The model's media endpoints: Images (draw), speech to text, text to speech, through the
process's one AsyncOpenAI (`make_client`), so auth, base URL, retries and transport are the
chat model's.

Each call has its own timeout, longer than the chat's time between two chunks: an image
arrives whole after it is drawn (often 30-60 s for gpt-image-1). The SDK still retries 429
and 5xx as configured. Every failure becomes an `LLMError` naming only its kind and status.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from pathlib import PurePosixPath
from typing import TypeVar

from openai import AsyncOpenAI, Timeout, omit

from core.config import LLMSettings
from core.llm.openai_chat import describe_error
from core.protocols import LLMError

T = TypeVar("T")

DRAW_TIMEOUT = 120.0  # seconds for one image request (it comes back in one piece)
TRANSCRIBE_TIMEOUT = 90.0  # a voice note of a few minutes, uploaded and read
SPEAK_TIMEOUT = 60.0  # speech for one answer (the API caps the input at 4096 characters)

# What OpenAI's transcription reads, by the file name's extension (it ignores the part's
# content type). gpt-4o-*-transcribe refuse Telegram's `.oga` ("Unsupported file format
# oga") though it is the same Ogg they accept as `.ogg`:
# https://github.com/LiveHelperChat/livehelperchat/issues/2382
AUDIO_EXTENSIONS = frozenset({"flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "ogg", "wav", "webm"})
EXTENSION_BY_TYPE = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "application/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/webm": "webm",
    "video/webm": "webm",
    "video/mp4": "mp4",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
}
OTHER_EXTENSIONS = {"oga": "ogg", "opus": "ogg"}  # Ogg by another name


class OpenAIMedia:
    """The `MediaModel` protocol over the OpenAI Images and Audio APIs."""

    def __init__(
        self,
        client: AsyncOpenAI,
        settings: LLMSettings,
        *,
        draw_timeout: float = DRAW_TIMEOUT,
        transcribe_timeout: float = TRANSCRIBE_TIMEOUT,
        speak_timeout: float = SPEAK_TIMEOUT,
    ) -> None:
        self.client = client
        connect = settings.connect_timeout
        self._draw_timeout = Timeout(draw_timeout, connect=connect)
        self._transcribe_timeout = Timeout(transcribe_timeout, connect=connect)
        self._speak_timeout = Timeout(speak_timeout, connect=connect)

    async def draw(self, prompt: str, *, model: str, size: str) -> bytes:
        """The picture's bytes (PNG unless the server chose otherwise).

        dall-e models answer with a URL unless asked for base64; gpt-image models always
        answer base64 and refuse the parameter. A URL is not fetched: it points anywhere the
        server says, and the core has no fetcher that refuses private addresses."""
        response = await _call(
            self.client.images.generate(
                model=model,
                prompt=prompt,
                size=size,
                n=1,
                response_format="b64_json" if model.startswith("dall-e") else omit,
                timeout=self._draw_timeout,
            )
        )
        image = response.data[0] if response.data else None
        if image is None or not image.b64_json:
            if image is not None and image.url:
                raise LLMError("the image server gave a URL instead of the image")
            raise LLMError("the image server sent no image")
        try:
            return base64.b64decode(image.b64_json, validate=True)
        except (binascii.Error, ValueError):
            raise LLMError("the image server sent a malformed image") from None

    async def transcribe(self, audio: bytes, *, name: str, mime_type: str, model: str) -> str:
        """The text spoken in `audio`. The upload is named with an extension the API reads."""
        result = await _call(
            self.client.audio.transcriptions.create(
                model=model,
                file=(audio_name(name, mime_type), audio, mime_type or "application/octet-stream"),
                timeout=self._transcribe_timeout,
            )
        )
        text = result if isinstance(result, str) else getattr(result, "text", None)
        if not isinstance(text, str):
            raise LLMError("the transcription server sent no text")
        return text.strip()

    async def speak(self, text: str, *, model: str, voice: str) -> bytes:
        """OGG/Opus speech for `text` (what Telegram plays as a voice note)."""
        response = await _call(
            self.client.audio.speech.create(
                model=model,
                voice=voice,
                input=text,
                response_format="opus",
                timeout=self._speak_timeout,
            )
        )
        data = response.content
        if not data:
            raise LLMError("the speech server sent no audio")
        return data


async def _call(request: Awaitable[T]) -> T:
    """The SDK's answer, or its failure (after its retries) as an LLMError safe to log."""
    try:
        return await request
    except Exception as exc:  # APIError, APIConnectionError, APITimeoutError, a parse error
        raise LLMError(describe_error(exc)) from None


def audio_name(name: str, mime_type: str) -> str:
    """`name` with an extension the transcription API accepts, from the MIME type when its
    own is missing or one the API refuses (`voice.oga` -> `voice.ogg`)."""
    path = PurePosixPath(name.replace("\\", "/")).name or "audio"
    stem, dot, extension = path.rpartition(".")
    if not dot:
        stem, extension = path, ""
    extension = extension.lower()
    if extension in AUDIO_EXTENSIONS:
        return path
    better = OTHER_EXTENSIONS.get(extension) or EXTENSION_BY_TYPE.get(
        mime_type.split(";")[0].strip().lower()
    )
    return f"{stem or 'audio'}.{better}" if better else path
