"""Hostile input, made harmless before anything else sees it.

Control characters (except newline and tab), the zero-width space, bidirectional overrides
and isolates (which can make text read differently than it is stored) and unpaired
surrogates are removed. What real text needs stays: the zero-width joiner (emoji sequences
such as families and flags), the zero-width non-joiner (Persian, Hindi and other scripts)
and the left-to-right and right-to-left marks. A message longer than the configured limit is
cut with a short notice to the user, so a 100 KB paste costs neither the model budget nor a
crash.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from core.model import Message
from core.protocols import Handler, Responder
from core.streaming.reply import reply

# U+200B zero-width space; U+202A-U+202E embeddings and overrides; U+2066-U+2069 isolates.
# Kept: U+200C ZWNJ, U+200D ZWJ, U+200E LRM, U+200F RLM.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2066-\u2069]")
TRUNCATED = "(Your message was {length:,} characters; I read only the first {limit:,}.)"


def clean_text(text: str) -> str:
    """Text with control and bidirectional-override characters removed, valid UTF-8."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")  # lone surrogates
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", CONTROL.sub("", text))


class Sanitized:
    """Middleware: cleans every message's text and cuts it at `max_chars`."""

    def __init__(self, handler: Handler, max_chars: int) -> None:
        self.handler = handler
        self.max_chars = max_chars

    async def __call__(self, message: Message, responder: Responder) -> None:
        text = clean_text(message.text)
        if len(text) > self.max_chars:
            await reply(responder, TRUNCATED.format(length=len(text), limit=self.max_chars))
            text = text[: self.max_chars]
        command = message.command
        if command is not None:
            command = replace(command, args=clean_text(command.args)[: self.max_chars])
        await self.handler(replace(message, text=text, command=command), responder)
