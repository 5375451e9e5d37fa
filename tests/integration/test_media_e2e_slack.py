"""Media on Slack, end to end (issue #18): signed events with files into the real bolt app
(`BotApp`), the whole core on the test Redis, the fake Slack's files and uploads, and the fake
OpenAI server's vision, Images and transcription endpoints. No recording handler in between:
what is asserted is what Slack and OpenAI received.

One bot per test, with `media.max_bytes` small enough that a declared size over it is refused
and everything else fits."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    file_share,
    mention,
    message,
    sign,
)
from tests.helpers import wait_for
from tests.media_files import FAKE_IMAGE, pdf, png

CHANNEL = "C0GENERAL"
DM = "D0ANN"
MAX_BYTES = 50_000  # media.max_bytes: every file below fits but the "large" one
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SlackBot:
    """Says things to the running bot as Slack would; reads what the fake Slack shows."""

    def __init__(self, app: BotApp, slack: FakeSlack, openai: FakeOpenAI) -> None:
        self.app, self.slack, self.openai = app, slack, openai

    async def _post(self, body: str, content_type: str) -> None:
        url = f"http://127.0.0.1:{self.app.port}/slack/events"
        headers = {**sign(body), "Content-Type": content_type}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()

    async def event(self, event: dict[str, Any]) -> dict[str, Any]:
        await self._post(json.dumps(event_body(event)), "application/json")
        return event

    async def slash(self, text: str) -> None:
        form = {"command": "/ask", "text": text, "user_id": "U0ANN", "user_name": "ann",
                "channel_id": CHANNEL, "team_id": "T0TEST", "trigger_id": "tr1",
                "response_url": f"http://127.0.0.1:{self.slack.port}/api/respond",
                "token": "unused"}  # fmt: skip
        await self._post(urlencode(form), "application/x-www-form-urlencoded")

    async def answers(self, channel: str, thread: str | None, count: int) -> list[str]:
        """The bot's messages there once there are `count` final ones (no placeholder)."""
        thinking = self.app.settings.platforms.slack.thinking

        def shown() -> list[str]:
            return [t for t in self.slack.texts_in(channel, thread) if t != thinking]

        await wait_for(lambda: len(shown()) >= count and thinking not in
                       self.slack.texts_in(channel, thread))  # fmt: skip
        return shown()


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[SlackBot]:
    settings = make_settings(key_prefix, tmp_path, media={"max_bytes": MAX_BYTES},
                             platforms={"slack": {"native_streaming": False}})  # fmt: skip
    async with FakeSlack(streaming=False) as slack:
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                          slack_api_url=slack.api_url,
                          openai_base_url=fake_openai.base_url)  # fmt: skip
        app = BotApp(settings, secrets, redis=redis)
        await app.start()
        try:
            yield SlackBot(app, slack, fake_openai)
        finally:
            await app.stop()


async def test_a_photo_is_seen_answered_in_its_thread_and_seen_again(bot: SlackBot) -> None:
    picture = png(64, 48, "red")
    photo = bot.slack.add_file(picture, "car.png", "image/png")
    asked = await bot.event(mention("what is in this photo?", channel=CHANNEL, files=[photo]))

    [answer] = await bot.answers(CHANNEL, asked["ts"], 1)
    assert answer.startswith("echo: what is in this photo?")
    first = bot.openai.chat_requests()[-1]
    assert first.images == [picture]
    assert [(d.authorized, "/download/" in d.path) for d in bot.slack.downloads] == [(True, True)]

    # a reply in the thread the bot answered needs no mention, and the photo comes back
    await bot.event(message("and what colour is the car?", channel=CHANNEL,
                            channel_type="channel", thread_ts=asked["ts"]))  # fmt: skip
    answers = await bot.answers(CHANNEL, asked["ts"], 2)
    assert answers[1] == "echo: and what colour is the car?"
    follow_up = bot.openai.chat_requests()[-1].messages
    earlier = follow_up[-3]["content"]  # the photo's turn, its image read back from Redis
    assert base64.b64decode(earlier[1]["image_url"]["url"].split(",", 1)[1]) == picture
    assert follow_up[-1]["content"] == "and what colour is the car?"
    assert len(bot.slack.downloads) == 1  # seen again from the store, not downloaded again


async def test_image_in_a_mention_uploads_the_picture_into_the_thread(bot: SlackBot) -> None:
    asked = await bot.event(mention("/image a red lighthouse", channel=CHANNEL))

    await wait_for(lambda: bot.slack.uploads_in(CHANNEL, asked["ts"]))
    [upload] = bot.slack.uploads_in(CHANNEL, asked["ts"])
    assert upload.data.startswith(PNG_MAGIC) and upload.filename.endswith(".png")
    assert bot.openai.image_requests()[-1].body["prompt"] == "a red lighthouse"
    assert bot.openai.chat_requests() == []  # drawn, not chatted about
    assert [u.channel for u in bot.slack.uploads] == [CHANNEL]


async def test_image_in_a_dm_uploads_the_picture_in_the_dm(bot: SlackBot) -> None:
    await bot.event(message("/image a blue whale"))
    await wait_for(lambda: bot.slack.uploads_in(DM))
    [upload] = bot.slack.uploads_in(DM)
    assert upload.data.startswith(PNG_MAGIC)
    assert bot.openai.image_requests()[-1].body["prompt"] == "a blue whale"


async def test_ask_image_as_a_slash_command_draws(bot: SlackBot) -> None:
    await bot.slash("image a red lighthouse")
    await wait_for(lambda: bool(bot.slack.uploads_in(CHANNEL) or bot.openai.chat_requests()))
    assert bot.openai.chat_requests() == []  # today: the model is asked "image a red ..."
    await wait_for(lambda: bool(bot.slack.uploads_in(CHANNEL)))
    assert bot.slack.uploads_in(CHANNEL)[0].data.startswith(PNG_MAGIC)


async def test_an_audio_clip_is_transcribed_quoted_and_answered(bot: SlackBot) -> None:
    clip = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8  # a webm clip recorded in Slack
    bot.openai.transcripts[clip] = "remind me what a lighthouse does"
    audio = bot.slack.add_file(clip, "audio_message.webm", "audio/webm", subtype="slack_audio",
                               media_display_type="audio")  # fmt: skip
    await bot.event(file_share("", [audio]))

    heard, answer = await bot.answers(DM, None, 2)
    assert heard == "> 🎤 _remind me what a lighthouse does_"  # mrkdwn: a quote, in italics
    assert answer == "echo: remind me what a lighthouse does"
    upload = bot.openai.transcription_requests()[-1].upload
    assert upload is not None and upload.data == clip and upload.filename.endswith(".webm")


async def test_a_pdf_with_a_question_reaches_the_model_as_text(bot: SlackBot) -> None:
    report = bot.slack.add_file(pdf("Revenue grew 12 percent"), "report.pdf", "application/pdf")
    await bot.event(file_share("what does the report say?", [report]))

    [answer] = await bot.answers(DM, None, 1)
    assert answer.startswith("echo: what does the report say?")
    said = bot.openai.chat_requests()[-1].messages[-1]["content"]
    assert said.startswith("what does the report say?") and "Revenue grew 12 percent" in said


async def test_bad_files_get_clear_replies_and_the_next_message_is_answered(
    bot: SlackBot,
) -> None:
    # declared larger than media.max_bytes: refused before any byte is downloaded
    large = bot.slack.add_file(png(), "huge.png", "image/png", size=MAX_BYTES + 1)
    await bot.event(file_share("", [large]))
    [refused] = await bot.answers(DM, None, 1)
    assert "huge.png" in refused and "larger than" in refused
    assert bot.slack.downloads == []

    fake = bot.slack.add_file(FAKE_IMAGE, "fake.png", "image/png")
    await bot.event(file_share("", [fake]))
    answers = await bot.answers(DM, None, 2)
    assert "fake.png" in answers[1] and "not an image I can read" in answers[1]

    broken = bot.slack.add_file(png(), "broken.png", "image/png")
    bot.slack.fail_download(broken["id"], 500)
    await bot.event(file_share("", [broken]))
    answers = await bot.answers(DM, None, 3)
    assert "couldn't download" in answers[2] and "broken.png" in answers[2]
    assert bot.openai.chat_requests() == []  # nothing was left to ask the model

    await bot.event(message("hello again"))
    answers = await bot.answers(DM, None, 4)
    assert answers[3] == "echo: hello again"
    assert bot.openai.chat_requests()[-1].messages[-1]["content"] == "hello again"


async def test_a_bad_file_beside_a_question_still_gets_the_question_answered(
    bot: SlackBot,
) -> None:
    broken = bot.slack.add_file(png(), "broken.png", "image/png")
    bot.slack.fail_download(broken["id"], 500)
    await bot.event(file_share("what is 2+2?", [broken]))
    problem, answer = await bot.answers(DM, None, 2)
    assert "couldn't download" in problem and "broken.png" in problem
    assert answer.startswith("echo: what is 2+2?")
