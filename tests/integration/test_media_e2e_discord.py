"""Media on Discord, end to end (issue #18): files and voice messages on the fake gateway into
the real discord.py client (`BotApp`), the whole core on the test Redis, the fake's CDN and
uploads, and the fake OpenAI server's vision, Images and transcription endpoints. No
recording handler in between: what is asserted is what Discord and OpenAI received.

One bot per test (discord.py takes ~2 s to start, so related steps share a test), with
`media.max_bytes` small enough that a larger file is refused and everything else fits."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.discord import BOT_ID, CHANNEL, DM_CHANNEL, GUILD, TOKEN, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import wait_for
from tests.media_files import FAKE_IMAGE, ogg, pdf, png

MAX_BYTES = 50_000  # media.max_bytes: every file below fits but the "large" one
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mention(text: str = "") -> str:
    return f"<@{BOT_ID}> {text}".strip()


async def shown(discord: FakeDiscord, channel: str, count: int) -> list[str]:
    """The bot's messages in `channel` once there are `count` of them."""
    await wait_for(lambda: len(discord.texts_in(channel)) >= count)
    return discord.texts_in(channel)


@pytest.fixture
async def discord(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[FakeDiscord]:
    settings = make_settings(key_prefix, tmp_path, media={"max_bytes": MAX_BYTES},
                             platforms={"discord": {"guild_ids": [int(GUILD)]}})  # fmt: skip
    async with FakeDiscord() as fake:
        secrets = Secrets(discord_bot_token=TOKEN, discord_api_url=fake.api_url,
                          discord_gateway_url=fake.gateway_url,
                          openai_base_url=fake_openai.base_url)  # fmt: skip
        app = BotApp(settings, secrets, redis=redis)
        await app.start()
        try:
            yield fake
        finally:
            await app.stop()


async def test_a_photo_is_seen_answered_as_a_reply_and_seen_again(
    discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    picture = png(64, 48, "red")
    asked = await discord.user_sends_file(picture, "car.png", "image/png",
                                          mention("what is in this photo?"),
                                          mention_bot=True)  # fmt: skip

    [answer] = await shown(discord, CHANNEL, 1)
    assert answer.startswith("echo: what is in this photo?")
    assert fake_openai.chat_requests()[-1].images == [picture]
    reply = discord.calls_to("POST", f"/channels/{CHANNEL}/messages")[0]
    assert str(reply.body["message_reference"]["message_id"]) == asked["id"]
    [download] = discord.calls_to("GET", "/attachments/")
    assert "Authorization" not in download.headers  # the CDN URL is signed: no token

    await discord.user_says(mention("and what colour is the car?"), mention_bot=True)
    answers = await shown(discord, CHANNEL, 2)
    assert answers[1] == "echo: and what colour is the car?"
    follow_up = fake_openai.chat_requests()[-1].messages
    earlier = follow_up[-3]["content"]  # the photo's turn, its image read back from Redis
    assert base64.b64decode(earlier[1]["image_url"]["url"].split(",", 1)[1]) == picture
    assert follow_up[-1]["content"] == "and what colour is the car?"
    assert len(discord.calls_to("GET", "/attachments/")) == 1  # not downloaded again


async def test_image_posts_the_picture_where_it_was_asked(
    discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    """The /image slash command: in the interaction's follow-up; typed in a mention: as a
    reply to that message."""
    sent = await discord.slash("image", {"prompt": "a red fox"})
    await wait_for(lambda: len(discord.uploads) == 1)
    [upload] = discord.uploads
    assert upload.data.startswith(PNG_MAGIC) and upload.filename.endswith(".png")
    assert (upload.token, upload.channel) == (sent["token"], CHANNEL)
    assert discord.calls_to("POST", "/callback")[0].body["type"] == 5  # deferred at once
    assert fake_openai.image_requests()[-1].body["prompt"] == "a red fox"

    asked = await discord.user_says(mention("/image a blue whale"), mention_bot=True)
    await wait_for(lambda: len(discord.uploads) == 2)
    upload = discord.uploads[1]
    assert upload.data.startswith(PNG_MAGIC) and (upload.channel, upload.token) == (CHANNEL, None)
    assert upload.message_reference is not None
    assert str(upload.message_reference["message_id"]) == asked["id"]
    assert fake_openai.image_requests()[-1].body["prompt"] == "a blue whale"
    assert fake_openai.chat_requests() == []  # drawn, not chatted about


async def test_a_voice_message_is_heard_and_a_pdf_is_read(
    discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    voice = ogg()
    fake_openai.transcripts[voice] = "remind me what a lighthouse does"
    await discord.user_sends_file(voice, "voice-message.ogg", "audio/ogg", voice=True,
                                  channel_id=DM_CHANNEL, guild=False)  # fmt: skip
    heard, answer = await shown(discord, DM_CHANNEL, 2)
    assert heard == "> 🎤 _remind me what a lighthouse does_"
    assert answer == "echo: remind me what a lighthouse does"
    upload = fake_openai.transcription_requests()[-1].upload
    assert upload is not None and upload.data == voice and upload.filename.endswith(".ogg")

    await discord.user_sends_file(pdf("Revenue grew 12 percent"), "report.pdf", "application/pdf",
                                  mention("what does the report say?"),
                                  mention_bot=True)  # fmt: skip
    [answer] = await shown(discord, CHANNEL, 1)
    assert answer.startswith("echo: what does the report say?")
    said = fake_openai.chat_requests()[-1].messages[-1]["content"]
    assert said.startswith("what does the report say?") and "Revenue grew 12 percent" in said


async def test_bad_files_get_clear_replies_and_the_next_message_is_answered(
    discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    dm = {"channel_id": DM_CHANNEL, "guild": False}
    # larger than media.max_bytes, as Discord states: refused before any byte is downloaded
    await discord.user_sends_file(b"\x89PNG" + bytes(MAX_BYTES), "huge.png", "image/png", **dm)
    [refused] = await shown(discord, DM_CHANNEL, 1)
    assert "huge.png" in refused and "larger than" in refused
    assert discord.calls_to("GET", "/attachments/") == []

    await discord.user_sends_file(FAKE_IMAGE, "fake.png", "image/png", **dm)
    answers = await shown(discord, DM_CHANNEL, 2)
    assert "fake.png" in answers[1] and "not an image I can read" in answers[1]

    discord.fail("GET /attachments/", 500)
    await discord.user_sends_file(png(), "broken.png", "image/png", **dm)
    answers = await shown(discord, DM_CHANNEL, 3)
    assert "couldn't download" in answers[2] and "broken.png" in answers[2]
    assert fake_openai.chat_requests() == []  # nothing was left to ask the model

    await discord.user_says("hello again", **dm)
    answers = await shown(discord, DM_CHANNEL, 4)
    assert answers[3] == "echo: hello again"
