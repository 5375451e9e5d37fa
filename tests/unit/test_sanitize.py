"""Hostile input: control characters, invalid UTF-8, huge messages, empty messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.model import Message
from core.protocols import Responder
from core.sanitize import Sanitized, clean_text
from tests.helpers import RecordingResponder, user_message


def test_control_and_bidi_characters_are_removed():
    assert clean_text("a\x00b\x1b[31mc\u202ed\r\ne\tf") == "ab[31mcd\ne\tf"


def test_lone_surrogates_become_replacement_characters():
    assert clean_text("ok \ud800 end") == "ok ? end"


@given(st.text())
def test_clean_text_is_valid_utf8_and_idempotent(text: str):
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    assert clean_text(cleaned) == cleaned


async def test_huge_message_is_cut_with_a_notice():
    seen: list[Message] = []

    async def handler(message: Message, responder: Responder) -> None:
        seen.append(message)

    responder = RecordingResponder()
    await Sanitized(handler, max_chars=1000)(user_message("x" * 100_000), responder)
    assert len(seen[0].text) == 1000
    assert responder.texts == [
        "(Your message was 100,000 characters; I read only the first 1,000.)"
    ]
