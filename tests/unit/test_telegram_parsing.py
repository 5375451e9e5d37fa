"""Telegram update parsing and HTML rendering, including hostile input."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Update
from telegram.error import RetryAfter

from adapters.telegram_format import to_telegram_html
from adapters.telegram_polling import Poller
from adapters.telegram_updates import BotIdentity, to_message
from tests.fakes.telegram import BOT_ID, BOT_USERNAME, html_error, mention_entity, text_message

BOT = BotIdentity(BOT_ID, BOT_USERNAME)


def _update(message: dict) -> Update:
    return Update.de_json({"update_id": 1, "message": message}, None)


def test_mention_after_emoji_uses_utf16_offsets():
    text = f"👩‍👩‍👧 hi @{BOT_USERNAME} please"
    entities = [mention_entity(text, "@" + BOT_USERNAME)]
    update = _update(text_message(text, chat_id=-5, kind="group", entities=entities))
    message = to_message(update, BOT)
    assert message is not None
    assert message.text == "👩‍👩‍👧 hi please"


def test_mention_of_someone_else_is_ignored():
    text = "@SomebodyElse hi"
    update = _update(text_message(text, chat_id=-5, kind="group",
                                  entities=[mention_entity(text, "@SomebodyElse")]))  # fmt: skip
    assert to_message(update, BOT) is None


def test_forum_topic_is_the_thread():
    message = to_message(
        _update(text_message("/ask x", chat_id=-5, kind="supergroup", topic=9)), BOT
    )
    assert message is not None and message.key.thread == "9"


def test_html_escapes_everything_hostile():
    html = to_telegram_html("a < b && c > d <script>x</script> *unclosed _under `tick")
    assert html_error(html) == ""
    assert "<script>" not in html


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_any_text_renders_to_valid_telegram_html(text: str):
    html = to_telegram_html(text)
    assert html_error(html) == "", html


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["private", "group", "supergroup"]))
def test_parser_never_raises(text: str, kind: str):
    to_message(_update(text_message(text or "x", chat_id=-5, kind=kind)), BOT)


class _FloodedBot:
    """get_updates: a flood wait first, then a stop."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_updates(self, **_: object) -> list[Update]:
        self.calls += 1
        if self.calls == 1:
            raise RetryAfter(0)
        raise ConnectionAbortedError("stop")


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
@pytest.mark.parametrize("timedelta", ["true", "false"])
async def test_poller_waits_out_a_flood_wait_in_either_of_ptbs_forms(monkeypatch, timedelta):
    # PTB_TIMEDELTA=false (a user's environment wins over adapters.telegram's default)
    # gives `retry_after` in int seconds, which has no total_seconds().
    monkeypatch.setenv("PTB_TIMEDELTA", timedelta)
    bot = _FloodedBot()
    poller = Poller(bot, asyncio.Queue(), timeout=0, allowed_updates=["message"])
    with pytest.raises(ConnectionAbortedError):
        await poller.run()
    assert bot.calls == 2


def test_only_a_private_chat_is_private():
    private = to_message(_update(text_message("hi", chat_id=42, kind="private")), BOT)
    group = to_message(_update(text_message("/ask hi", chat_id=-5, kind="group")), BOT)
    assert private is not None and private.private
    assert group is not None and not group.private
