"""Spoken answers (`/voice on`): the finished answer, as plain text, through text to speech,
posted as an audio file (a voice note on Telegram) after the written one."""

from __future__ import annotations

import logging
import re

from core.model import MediaKind, OutgoingFile
from core.protocols import LLMError, MediaModel, MediaResponder, Responder

log = logging.getLogger(__name__)

NOT_SPOKEN = "_(I couldn't speak this answer just now.)_"
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKS = re.compile(r"(```[^\n]*|[*_`~#>]+)")


def speakable(markdown: str) -> str:
    """What a voice reads aloud: link texts without their URLs, no emphasis or code marks."""
    return re.sub(r"[ \t]+", " ", _MARKS.sub("", _LINK.sub(r"\1", markdown))).strip()


class Speaker:
    def __init__(self, media: MediaModel, *, model: str, voice: str, max_chars: int) -> None:
        self.media = media
        self.model = model
        self.voice = voice
        self.max_chars = max_chars

    async def speak(self, answer: str, responder: Responder) -> bool:
        """Post `answer` as speech where it was written; False when it could not be."""
        text = speakable(answer)[: self.max_chars]
        if not text or not isinstance(responder, MediaResponder):
            return False
        try:
            audio = await self.media.speak(text, model=self.model, voice=self.voice)
            await responder.send_file(
                OutgoingFile(audio, "answer.ogg", "audio/ogg", MediaKind.AUDIO)
            )
        except LLMError as exc:
            log.warning("speech failed: %s", exc)
            try:
                await responder.send(NOT_SPOKEN, final=True)
            except Exception as exc2:  # the written answer stands either way
                log.warning("could not say so: %s", type(exc2).__name__)
            return False
        except Exception as exc:  # the platform refused the file: the text answer stands
            log.warning("posting speech failed: %s", type(exc).__name__)
            return False
        return True
