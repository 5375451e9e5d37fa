"""Discord files, end to end through the real adapter and discord.py against the fake
(gateway, REST, CDN): attachments in, `fetch` from the CDN only, `send_file` to the channel
or the interaction's follow-up (issue #18).

The adapter hands its messages to a handler that keeps them with their responders, so each
test drives the responder the core would get."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import discord
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter
from adapters.discord_media import attachments_of
from core.config import Settings
from core.model import Attachment, Command, MediaKind, Message, OutgoingFile
from core.protocols import FetchError, MediaResponder, Responder
from stores.memory import MemoryStore
from tests.conftest import make_settings
from tests.fakes.discord import APP_ID, BOT_ID, CHANNEL, DM_CHANNEL, GUILD, TOKEN, FakeDiscord
from tests.helpers import wait_for
from tests.integration.test_discord import pings_nobody
from tests.unit.test_discord_event_props import STATE, _channel, _payload

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
OGG = b"OggS\x00\x02" + b"\x01" * 900
PDF = b"%PDF-1.7\n" + b"x" * 2000 + b"\n%%EOF\n"


@dataclass
class Inbox:
    """The core's place: every message with the responder the adapter gave for it."""

    got: list[tuple[Message, Responder]] = field(default_factory=list)

    async def __call__(self, message: Message, responder: Responder) -> None:
        self.got.append((message, responder))

    async def wait(self, message_id: str) -> tuple[Message, MediaResponder]:
        await wait_for(lambda: any(m.message_id == message_id for m, _ in self.got))
        message, responder = next((m, r) for m, r in self.got if m.message_id == message_id)
        assert isinstance(responder, MediaResponder)
        return message, responder


@dataclass
class Bot:
    discord: FakeDiscord
    adapter: DiscordAdapter
    inbox: Inbox


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Bot]:
    """The adapter connected to a fresh fake, handing messages to an `Inbox`."""
    async with FakeDiscord() as fake:
        inbox = Inbox()
        adapter = DiscordAdapter(inbox, MemoryStore(), settings, token=TOKEN,
                                 api_url=fake.api_url, gateway_url=fake.gateway_url)  # fmt: skip
        await adapter.start()
        try:
            yield Bot(fake, adapter, inbox)
        finally:
            await adapter.close()


def _settings(key_prefix: str, tmp_path: Path, **discord: Any) -> Settings:
    return make_settings(key_prefix, tmp_path,
                         platforms={"discord": {"guild_ids": [int(GUILD)], **discord}})  # fmt: skip


@pytest.fixture
async def bot(key_prefix: str, tmp_path: Path) -> AsyncIterator[Bot]:
    async with running(_settings(key_prefix, tmp_path)) as started:
        yield started


def mention(text: str = "") -> str:
    return f"<@{BOT_ID}> {text}".strip()


async def test_an_image_a_voice_message_and_a_pdf_become_attachments(bot: Bot) -> None:
    fake = bot.discord
    sent = await fake.user_sends_file(PNG, "cat.png", "image/png", mention(), mention_bot=True)
    image, _ = await bot.inbox.wait(sent["id"])
    assert image.text == "" and image.addressed
    url = sent["attachments"][0]["url"]
    assert image.attachments == (
        Attachment("cat.png", "image/png", url, len(PNG), MediaKind.IMAGE),
    )

    sent = await fake.user_sends_file(OGG, "voice-message.ogg", "audio/ogg", voice=True,
                                      channel_id=DM_CHANNEL, guild=False)  # fmt: skip
    voice, _ = await bot.inbox.wait(sent["id"])
    assert voice.private and voice.text == ""
    assert [(a.name, a.mime_type, a.kind) for a in voice.attachments] == [
        ("voice-message.ogg", "audio/ogg", MediaKind.AUDIO)
    ]

    sent = await fake.user_sends_file(PDF, "report.pdf", "application/pdf", mention("summarise"),
                                      mention_bot=True)  # fmt: skip
    pdf, _ = await bot.inbox.wait(sent["id"])
    assert pdf.text == "summarise"
    assert [(a.name, a.size, a.kind) for a in pdf.attachments] == [
        ("report.pdf", len(PDF), MediaKind.DOCUMENT)
    ]


@pytest.mark.parametrize(
    ("filename", "content_type", "mime", "kind"),
    [
        ("main.py", None, "text/x-python", MediaKind.DOCUMENT),  # Discord sent no type
        ("data.csv", "text/csv; charset=utf-8", "text/csv", MediaKind.DOCUMENT),
        ("config.json", "application/json", "application/json", MediaKind.DOCUMENT),
        ("lib.rs", "application/octet-stream", "application/octet-stream", MediaKind.DOCUMENT),
        ("song.mp3", "audio/mpeg", "audio/mpeg", MediaKind.AUDIO),
        ("backup.zip", "application/zip", "application/zip", MediaKind.OTHER),
    ],
)
async def test_the_kind_comes_from_the_type_and_the_name(
    bot: Bot, filename: str, content_type: str | None, mime: str, kind: MediaKind
) -> None:
    sent = await bot.discord.user_sends_file(b"data", filename, content_type, mention(),
                                             mention_bot=True)  # fmt: skip
    message, _ = await bot.inbox.wait(sent["id"])
    assert [(a.mime_type, a.kind) for a in message.attachments] == [(mime, kind)]


async def test_a_file_nobody_addressed_to_the_bot_is_left_alone(bot: Bot) -> None:
    await bot.discord.user_sends_file(PNG, "holiday.png", "image/png")  # chatter, no mention
    sent = await bot.discord.user_says(mention("and now me"), mention_bot=True)
    await bot.inbox.wait(sent["id"])
    assert [m.text for m, _ in bot.inbox.got] == ["and now me"]
    assert not bot.discord.calls_to("GET", "/attachments/")  # and nothing was downloaded


async def test_fetch_gets_the_exact_bytes_without_the_bot_token(bot: Bot) -> None:
    sent = await bot.discord.user_sends_file(PDF, "report.pdf", "application/pdf", mention(),
                                             mention_bot=True)  # fmt: skip
    message, responder = await bot.inbox.wait(sent["id"])
    assert await responder.fetch(message.attachments[0], max_bytes=len(PDF)) == PDF
    (download,) = bot.discord.calls_to("GET", "/attachments/")
    assert "Authorization" not in download.headers
    assert TOKEN not in str(download.headers)


async def test_fetch_refuses_another_host_and_a_file_too_large(bot: Bot) -> None:
    sent = await bot.discord.user_sends_file(PNG, "cat.png", "image/png", mention(),
                                             mention_bot=True)  # fmt: skip
    message, responder = await bot.inbox.wait(sent["id"])
    elsewhere = Attachment("x.png", "image/png", "https://evil.example/x", 10, MediaKind.IMAGE)
    with pytest.raises(FetchError, match="not on the platform"):
        await responder.fetch(elsewhere, max_bytes=1_000_000)
    with pytest.raises(FetchError, match="larger than"):
        await responder.fetch(message.attachments[0], max_bytes=len(PNG) - 1)
    assert await responder.fetch(message.attachments[0], max_bytes=len(PNG)) == PNG


async def test_a_failing_download_is_a_fetch_error(bot: Bot) -> None:
    sent = await bot.discord.user_sends_file(PNG, "cat.png", "image/png", mention(),
                                             mention_bot=True)  # fmt: skip
    message, responder = await bot.inbox.wait(sent["id"])
    bot.discord.fail("GET /attachments/", 500)
    with pytest.raises(FetchError, match="500"):
        await responder.fetch(message.attachments[0], max_bytes=len(PNG))
    gone = Attachment("old.png", "image/png", message.attachments[0].handle + "gone", 3)
    bot.discord.files.clear()  # an expired link: the CDN answers 404
    with pytest.raises(FetchError, match="404"):
        await responder.fetch(gone, max_bytes=len(PNG))


async def test_send_file_replies_to_the_message_in_the_channel(bot: Bot) -> None:
    asked = await bot.discord.user_says(mention("draw me a cat"), mention_bot=True)
    _, responder = await bot.inbox.wait(asked["id"])
    picture = OutgoingFile(PNG, "cat.png", "image/png", MediaKind.IMAGE, "A **cat** @everyone")
    ref = await responder.send_file(picture)
    (upload,) = bot.discord.uploads
    assert (upload.data, upload.filename, upload.channel) == (PNG, "cat.png", CHANNEL)
    assert upload.content == "A **cat** @everyone"  # Discord renders the Markdown itself
    assert upload.message_reference is not None
    assert str(upload.message_reference["message_id"]) == asked["id"]
    assert upload.message_reference["fail_if_not_exists"] is False  # a deleted question
    assert ref.id == upload.message_id and ref.channel == CHANNEL
    (post,) = bot.discord.calls_to("POST", f"/channels/{CHANNEL}/messages")
    assert pings_nobody(post.body)
    posted = bot.discord.messages[ref.id]["attachments"]
    assert [a["filename"] for a in posted] == ["cat.png"]

    await responder.send("and a word about it", final=True)  # the file already replied
    text = bot.discord.calls_to("POST", f"/channels/{CHANNEL}/messages")[-1]
    assert "message_reference" not in text.body
    assert bot.discord.texts_in(CHANNEL) == ["A **cat** @everyone", "and a word about it"]


async def test_a_file_after_the_text_answer_still_replies_to_the_question(bot: Bot) -> None:
    asked = await bot.discord.user_says(mention("say it"), mention_bot=True)
    _, responder = await bot.inbox.wait(asked["id"])
    await responder.send("Here it is.", final=True)
    await responder.send_file(OutgoingFile(OGG, "answer.ogg", "audio/ogg", MediaKind.AUDIO))
    (upload,) = bot.discord.uploads
    assert upload.message_reference is not None
    assert str(upload.message_reference["message_id"]) == asked["id"]
    assert upload.content == ""


async def test_commands_image_and_voice_are_registered_and_routed(bot: Bot) -> None:
    synced = cast(list[dict[str, Any]], bot.discord.calls_to("PUT", "/commands")[-1].body)
    image = next(c for c in synced if c["name"] == "image")
    assert [(o["name"], o["type"], o["required"]) for o in image["options"]] == [
        ("prompt", 3, True)
    ]
    voice = next(c for c in synced if c["name"] == "voice")
    assert [c["value"] for c in voice["options"][0]["choices"]] == ["on", "off"]

    sent = await bot.discord.slash("voice", {"mode": "on"})
    message, _ = await bot.inbox.wait(sent["id"])
    assert message.command == Command("voice", "on")


async def test_with_media_off_there_is_no_image_or_voice_command(
    key_prefix: str, tmp_path: Path
) -> None:
    settings = make_settings(key_prefix, tmp_path, media={"enabled": False},
                             platforms={"discord": {"guild_ids": [int(GUILD)]}})  # fmt: skip
    async with running(settings) as bot:
        synced = cast(list[dict[str, Any]], bot.discord.calls_to("PUT", "/commands")[-1].body)
        assert {c["name"] for c in synced} == {"ask", "reset", "persona", "model", "help"}


async def test_send_file_in_an_interaction_goes_through_the_follow_up(bot: Bot) -> None:
    fake = bot.discord
    sent = await fake.slash("image", {"prompt": "a red fox"})
    message, responder = await bot.inbox.wait(sent["id"])
    assert message.command == Command("image", "a red fox")
    assert fake.calls_to("POST", "/callback")[0].body["type"] == 5  # deferred at once

    ref = await responder.send_file(
        OutgoingFile(PNG, "fox.png", "image/png", MediaKind.IMAGE, "a red fox")
    )
    (follow_up,) = fake.calls_to("POST", f"/webhooks/{APP_ID}/")
    assert follow_up.path == f"/webhooks/{APP_ID}/{sent['token']}"
    assert pings_nobody(follow_up.body)
    (upload,) = fake.uploads
    assert (upload.data, upload.filename, upload.token) == (PNG, "fox.png", sent["token"])
    assert not fake.calls_to("POST", f"/channels/{CHANNEL}/messages")
    # the first follow-up took the place of "thinking…"; the text after it is a new one
    assert fake.texts_in(CHANNEL) == ["a red fox"] and ref.id == upload.message_id
    await responder.send("Drawn with care.", final=True)
    assert fake.texts_in(CHANNEL) == ["a red fox", "Drawn with care."]
    assert not fake.calls_to("PATCH", "/messages/@original")  # the picture stays


async def test_send_file_after_the_interaction_token_expired_goes_to_the_channel(
    key_prefix: str, tmp_path: Path
) -> None:
    async with running(_settings(key_prefix, tmp_path, interaction_expiry=0.01)) as bot:
        started = time.monotonic()
        sent = await bot.discord.slash("image", {"prompt": "late"})
        _, responder = await bot.inbox.wait(sent["id"])
        await wait_for(lambda: time.monotonic() > started + 0.05)  # the token is gone
        await responder.send_file(OutgoingFile(PNG, "late.png", "image/png", MediaKind.IMAGE))
        (upload,) = bot.discord.uploads
        assert upload.channel == CHANNEL and upload.token is None
        assert not bot.discord.calls_to("POST", "/webhooks/")


async def test_responder_for_fetches_and_sends_files(bot: Bot) -> None:
    sent = await bot.discord.user_sends_file(PDF, "report.pdf", "application/pdf", mention(),
                                             mention_bot=True)  # fmt: skip
    message, _ = await bot.inbox.wait(sent["id"])
    recovered = bot.adapter.responder_for(message)  # after a crash: only the Message is left
    assert isinstance(recovered, MediaResponder)
    assert await recovered.fetch(message.attachments[0], max_bytes=len(PDF)) == PDF
    await recovered.send_file(OutgoingFile(b"hello", "notes.txt", "text/plain", MediaKind.DOCUMENT,
                                           "Your notes"))  # fmt: skip
    (upload,) = bot.discord.uploads
    assert (upload.data, upload.channel, upload.content) == (b"hello", CHANNEL, "Your notes")


attachment_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.sampled_from(["1", "2"]), "filename": attachment_values,
             "url": attachment_values, "proxy_url": attachment_values, "size": attachment_values},
            optional={"content_type": attachment_values, "flags": attachment_values,
                      "duration_secs": attachment_values},
        ),
        max_size=3,
    ),
    st.one_of(st.none(), st.integers(), st.text(max_size=3)),
)  # fmt: skip
def test_attachments_of_any_shape_never_break_a_message(
    items: list[dict[str, Any]], flags: Any
) -> None:
    channel = _channel("guild", 5, int(BOT_ID))
    data = {**_payload("hi", 7, 8, channel), "attachments": items, "flags": flags}
    try:
        msg = discord.Message(state=STATE, channel=channel, data=data)  # type: ignore[arg-type]
    except Exception:  # discord.py refused the payload: on_message never sees it
        assume(False)
        return
    for attachment in attachments_of(msg):
        assert isinstance(attachment.name, str) and attachment.handle
        assert attachment.size >= 0 and attachment.kind in MediaKind
