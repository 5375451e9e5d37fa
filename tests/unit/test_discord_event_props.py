"""Discord message parsing and outbound messages, including hostile input (property tests).

Inbound messages are real discord.py `Message` objects built from gateway payloads by the
SDK's own state, as the gateway would build them; outbound ones go through a channel that
records what `ChannelResponder` hands discord.py, and discord.py's own
`handle_message_parameters` turns that into the JSON body Discord would receive.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import discord
import pytest
from discord.http import handle_message_parameters
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters.discord import LIMIT, ChannelResponder
from adapters.discord_events import conversation_key, strip_bot_mention, to_message
from adapters.discord_media import make_fetcher
from core.model import MessageRef, parse_command
from core.streaming.splitting import split_text
from tests.fakes import discord as fd

BOT_ID = int(fd.BOT_ID)
GUILD_ID = int(fd.GUILD)
NO_PINGS_BODY = {"parse": [], "replied_user": False}

snowflakes = st.integers(min_value=1, max_value=2**63 - 1)
plain = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="<"))
pings = st.sampled_from(["@everyone", "@here", f"<@&{GUILD_ID}>", f"<@{fd.USER_ID}>", "<@&1>"])


def _state() -> Any:
    """discord.py's own connection state, logged in as the fake's bot user (no network)."""
    client = discord.Client(intents=discord.Intents.default())
    state = client._connection
    state.user = discord.ClientUser(state=state, data=fd.bot_user())
    return state


STATE = _state()
GUILD = discord.Guild(data={"id": fd.GUILD, "name": "g", "roles": [],
                            "channels": [fd.text_channel()]}, state=STATE)  # fmt: skip


def _thread(thread_id: int, owner_id: int) -> discord.Thread:
    data = {"id": str(thread_id), "guild_id": fd.GUILD, "parent_id": fd.CHANNEL, "type": 11,
            "owner_id": str(owner_id), "name": "t", "message_count": 1, "member_count": 1,
            "rate_limit_per_user": 0, "thread_metadata": {
                "archived": False, "auto_archive_duration": 60, "locked": False,
                "archive_timestamp": "2024-01-01T00:00:00+00:00"}}  # fmt: skip
    return discord.Thread(guild=GUILD, state=STATE, data=data)  # type: ignore[arg-type]


def _channel(kind: str, channel_id: int, owner_id: int) -> Any:
    if kind == "dm":
        return discord.DMChannel(me=STATE.user, state=STATE,
                                 data={"id": str(channel_id), "type": 1,
                                       "recipients": [fd.human()]})  # fmt: skip
    if kind == "guild":
        return GUILD.get_channel(int(fd.CHANNEL))
    return _thread(channel_id, owner_id)


def _payload(content: str, author_id: int, message_id: int, channel: Any) -> dict[str, Any]:
    return {"id": str(message_id), "channel_id": str(channel.id), "content": content,
            "author": fd.human(str(author_id), "someone"), "timestamp": "2024-01-01T00:00:00Z",
            "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": [fd.bot_user()], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": False, "type": 0}  # fmt: skip


@st.composite
def contents(draw: st.DrawFn) -> tuple[str, str]:
    """(content, what must remain of it): text around mentions of the bot in both forms."""
    pieces = draw(st.lists(st.one_of(plain, pings, st.sampled_from(["<@{}>", "<@!{}>"])),
                           max_size=8))  # fmt: skip
    content = "".join(p.format(BOT_ID) if p in ("<@{}>", "<@!{}>") else p for p in pieces)
    kept = "".join(p for p in pieces if p not in ("<@{}>", "<@!{}>"))
    return content, kept.strip()


def test_a_mention_hidden_inside_a_mention_is_stripped_too():
    assert strip_bot_mention(f"<@<@{BOT_ID}>{BOT_ID}> hi", BOT_ID) == "hi"
    assert strip_bot_mention(f"<@!<@!<@{BOT_ID}>{BOT_ID}>{BOT_ID}>", BOT_ID) == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), snowflakes)
def test_no_bot_mention_survives_stripping(content: str, bot_id: int):
    assert not re.search(rf"<@!?{bot_id}>", strip_bot_mention(content, bot_id))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents(), snowflakes, snowflakes, snowflakes,
       st.sampled_from(["dm", "guild", "own thread", "other thread"]))  # fmt: skip
def test_message_parsing_keeps_the_text_and_finds_the_conversation(
    content: tuple[str, str], author_id: int, message_id: int, channel_id: int, kind: str
):
    text, kept = content
    owner = BOT_ID if kind == "own thread" else author_id
    channel = _channel(kind, channel_id, owner)
    msg = discord.Message(state=STATE, channel=channel,
                          data=_payload(text, author_id, message_id, channel))  # type: ignore[arg-type]  # fmt: skip
    message = to_message(msg, channel, BOT_ID, admins={str(author_id)})
    assert message.text == kept
    assert message.command == parse_command(kept)
    assert message.user.id == str(author_id) and message.user.is_admin
    assert message.message_id == str(message_id) and message.platform == "discord"
    key = message.key
    if kind == "dm":
        assert (key.channel, key.workspace, key.thread) == (str(channel_id), "", "")
    elif kind == "guild":
        assert (key.channel, key.workspace, key.thread) == (fd.CHANNEL, fd.GUILD, "")
    else:
        assert (key.channel, key.workspace, key.thread) == (fd.CHANNEL, fd.GUILD, str(channel_id))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PAYLOAD_KEYS = ["id", "channel_id", "content", "author", "mentions", "type", "guild_id",
                "member", "message_reference", "referenced_message", "thread", "flags"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(PAYLOAD_KEYS) | st.text(max_size=10), json_values,
                       max_size=6), st.sampled_from(["dm", "guild", "own thread"]))  # fmt: skip
def test_garbage_payloads_never_break_parsing(garbage: dict[str, Any], kind: str):
    channel = _channel(kind, 5, BOT_ID)
    data = {**_payload("hi", 7, 8, channel), **garbage}
    try:
        msg = discord.Message(state=STATE, channel=channel, data=data)  # type: ignore[arg-type]
        _ = (msg.author.id, msg.author.display_name)  # on_message reads these before us
    except Exception:  # discord.py refused the payload: on_message never sees it
        assume(False)
        return
    message = to_message(msg, channel, BOT_ID, admins=())
    assert isinstance(message.text, str)
    assert not re.search(rf"<@!?{BOT_ID}>", message.text)
    assert conversation_key(channel, "7").platform == "discord"


class RecordingChannel:
    """A messageable that keeps the keyword arguments discord.py would have been given."""

    id = 42

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, content: str, **kwargs: Any) -> RecordingMessage:
        self.sent.append({"content": content, **kwargs})
        return RecordingMessage(len(self.sent), self)


class RecordingMessage:
    def __init__(self, message_id: int, channel: RecordingChannel) -> None:
        self.id, self.channel = message_id, channel

    async def edit(self, **kwargs: Any) -> None:
        self.channel.sent.append(kwargs)


def _wire_body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON body discord.py builds from what we handed it."""
    kwargs = dict(kwargs)
    kwargs.pop("reference", None)  # a reply needs a real message; it does not touch mentions
    with handle_message_parameters(**kwargs) as params:
        assert params.payload is not None
        return params.payload


async def _answer(text: str) -> list[dict[str, Any]]:
    """Send every part of `text` as ChannelResponder does, and edit the last one."""
    channel = RecordingChannel()
    responder = ChannelResponder(
        channel, reply_to=None, edit_interval=0, fetcher=make_fetcher(None)
    )
    parts = split_text(text, responder.limit)
    ref: MessageRef | None = None
    for part in parts:
        ref = await responder.send(part, final=True)
    if ref is not None:
        await responder.edit(ref, parts[-1], final=True)
    return channel.sent


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=600), pings), max_size=12))
def test_outbound_parts_fit_and_never_ping(pieces: list[str]):
    text = "".join(pieces)
    sent = asyncio.run(_answer(text))
    bodies = [_wire_body(kwargs) for kwargs in sent]
    for body in bodies:
        assert 0 < len(body["content"]) <= LIMIT
        assert body["content"].strip()
        mentions = body["allowed_mentions"]
        assert mentions["parse"] == [] and not mentions.get("roles") and not mentions.get("users")
        assert not mentions.get("replied_user")
    if "```" not in text and "~~~" not in text:  # no code fence to close and reopen at cuts
        shown = "".join(body["content"] for body in bodies[: len(bodies) - 1])
        assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", text)
    assert len(bodies) == (len(split_text(text, LIMIT)) + 1 if text.strip() else 0)


@pytest.mark.parametrize("ping", ["@everyone", "@here", f"<@&{GUILD_ID}>"])
def test_a_ping_in_an_answer_is_sent_as_text_without_permission_to_ping(ping: str):
    (sent, edit) = [_wire_body(kwargs) for kwargs in asyncio.run(_answer(f"hey {ping} look"))]
    assert sent["content"] == edit["content"] == f"hey {ping} look"
    assert sent["allowed_mentions"] == NO_PINGS_BODY
    assert edit["allowed_mentions"] == {"parse": []}
