"""Hostile input: control characters, invalid UTF-8, huge messages, empty messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.model import Message
from core.protocols import Responder
from core.routing.sanitize import Sanitized, clean_text
from tests.helpers import RecordingResponder, user_message


def test_control_and_bidi_characters_are_removed():
    assert clean_text("a\x00b\x1b[31mc\u202ed\r\ne\tf") == "ab[31mcd\ne\tf"


def test_joiners_and_direction_marks_that_real_text_needs_are_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one emoji
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # mi-khaham, with a ZWNJ
    marks = "price \u200e100\u200f"
    for text in (family, persian, marks, f"{family} {persian} {marks}"):
        assert clean_text(text) == text
    assert clean_text("a\u200bb\u2066c\u2069d\u202ee") == "abcde"  # the rest still goes


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
