"""Slack event parsing and mrkdwn rendering, including hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.slack_events import BotIdentity, command_from_slash, is_ignored, to_message
from adapters.slack_format import to_mrkdwn
from core.model import Command

BOT = BotIdentity("U0BOT", "B0BOT", "T0")


def test_mrkdwn_formats_and_escapes():
    text = "# Head\n**b** *i* ~~s~~ `a<b` [x](https://e.com/?a=1|2) <!here> & > done"
    out = to_mrkdwn(text)
    assert out.startswith("*Head*")
    assert "*b* _i_ ~s~ `a&lt;b`" in out
    assert "<https://e.com/?a=1%7C2|x>" in out
    assert "&lt;!here&gt; &amp; &gt; done" in out


def test_unsafe_links_are_not_links():
    assert "<javascript" not in to_mrkdwn("[click](javascript:alert(1))")
    assert to_mrkdwn("[click](ftp://x)") == "click"


def test_ignored_events():
    assert is_ignored({"user": "U0BOT", "text": "x"}, BOT, allow_bots=True)
    assert is_ignored({"bot_id": "B0OTHER", "text": "x"}, BOT, allow_bots=False)
    assert not is_ignored({"bot_id": "B0OTHER", "text": "x"}, BOT, allow_bots=True)
    assert is_ignored({"user": "U1", "subtype": "message_changed"}, BOT, allow_bots=False)
    assert not is_ignored({"user": "U1", "subtype": "thread_broadcast"}, BOT, allow_bots=False)


def test_slash_subcommands():
    assert command_from_slash("reset") == Command("reset")
    assert command_from_slash("persona pirate") == Command("persona", "pirate")
    assert command_from_slash("resetting my router?") == Command("ask", "resetting my router?")


def test_mention_is_stripped_and_thread_kept():
    message = to_message({"channel": "C1", "user": "U1", "ts": "1.2", "text": "<@U0BOT> hi"},
                         BOT, thread="1.2")  # fmt: skip
    assert message.text == "hi" and message.key.thread == "1.2" and message.key.workspace == "T0"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_markdown_renders_without_live_mentions(text: str):
    out = to_mrkdwn(text)
    assert "<!" not in out and "<@" not in out and "<#" not in out


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["user", "bot_id", "subtype", "text", "ts"]), st.text()))
def test_event_filter_never_raises(event: dict):
    is_ignored(event, BOT, allow_bots=False)


def test_a_direct_message_is_private_and_a_channel_is_not():
    dm = {"channel": "D1", "channel_type": "im", "user": "U1", "ts": "1.2", "text": "hi"}
    channel = {"channel": "C1", "channel_type": "channel", "user": "U1", "ts": "1.3", "text": "x"}
    assert to_message(dm, BOT, thread="").private
    assert not to_message(channel, BOT, thread="").private
