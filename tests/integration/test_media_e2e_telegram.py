"""Media on Telegram, end to end (issue #18): updates with photos, voice notes and documents
posted to the real python-telegram-bot webhook (`BotApp`), the whole core on the test Redis,
the fake Bot API's getFile, file downloads and sendPhoto, and the fake OpenAI server's vision,
Images and transcription endpoints. No recording handler in between: what is asserted is what
Telegram and OpenAI received.

One bot per test, with `media.max_bytes` small enough that a file announced larger is refused
and everything else fits."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram import FakeTelegram, media_message, text_message
from tests.helpers import wait_for
from tests.media_files import FAKE_IMAGE, ogg, pdf, png

TOKEN = "123456:TEST-token"
SECRET = "webhook-secret-value"
CHAT = 42  # Ann's private chat with the bot
GROUP = -1001234
TOPIC = 11
MAX_BYTES = 50_000  # media.max_bytes: every file below fits but the "large" one
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TelegramBot:
    """Delivers updates to the running bot's webhook; reads what the fake Bot API shows."""

    def __init__(self, app: BotApp, tg: FakeTelegram, openai: FakeOpenAI) -> None:
        self.app, self.tg, self.openai = app, tg, openai

    async def deliver(self, message: dict[str, Any]) -> dict[str, Any]:
        update = self.tg.update(message)
        self.tg.updates.remove(update)
        url = f"http://127.0.0.1:{self.app.port}/telegram/webhook"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=update, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
        return message

    async def answers(self, chat_id: int, count: int) -> list[str]:
        """The bot's messages in the chat once there are `count` of them."""
        await wait_for(lambda: len(self.tg.sent_texts(chat_id)) >= count)
        return self.tg.sent_texts(chat_id)


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[TelegramBot]:
    settings = make_settings(key_prefix, tmp_path, media={"max_bytes": MAX_BYTES},
                             platforms={"telegram": {"group_edit_interval": 0.05,
                                                     "group_max_rate": 10_000}})  # fmt: skip
    async with FakeTelegram(TOKEN) as tg:
        secrets = Secrets(telegram_bot_token=TOKEN, telegram_api_url=tg.api_url,
                          telegram_webhook_url="https://bot.example/telegram/webhook",
                          telegram_webhook_secret=SECRET,
                          openai_base_url=fake_openai.base_url)  # fmt: skip
        app = BotApp(settings, secrets, redis=redis)
        await app.start()
        try:
            yield TelegramBot(app, tg, fake_openai)
        finally:
            await app.stop()


async def test_a_photo_is_seen_answered_and_seen_again(bot: TelegramBot) -> None:
    small, picture = png(32, 24, "red"), png(64, 48, "red")
    sizes = bot.tg.photo(bot.tg.add_file(small, kind="photo"),
                         bot.tg.add_file(picture, kind="photo"))  # fmt: skip
    await bot.deliver(media_message({"photo": sizes}, caption="what is in this photo?"))

    [answer] = await bot.answers(CHAT, 1)
    assert answer.startswith("echo: what is in this photo?")
    assert bot.openai.chat_requests()[-1].images == [picture]  # the largest size
    assert len(bot.tg.downloads) == 1

    await bot.deliver(text_message("and what colour is the car?"))
    answers = await bot.answers(CHAT, 2)
    assert answers[1] == "echo: and what colour is the car?"
    follow_up = bot.openai.chat_requests()[-1].messages
    earlier = follow_up[-3]["content"]  # the photo's turn, its image read back from Redis
    assert base64.b64decode(earlier[1]["image_url"]["url"].split(",", 1)[1]) == picture
    assert follow_up[-1]["content"] == "and what colour is the car?"
    assert len(bot.tg.downloads) == 1  # seen again from the store, not downloaded again


async def test_image_posts_the_photo_in_the_chat_and_topic_it_was_asked_in(
    bot: TelegramBot,
) -> None:
    asked = await bot.deliver(text_message("/image a red lighthouse", chat_id=GROUP,
                                           kind="supergroup", topic=TOPIC))  # fmt: skip
    await wait_for(lambda: bool(bot.tg.uploads))
    [upload] = bot.tg.uploads
    assert upload.method == "sendPhoto" and upload.data.startswith(PNG_MAGIC)
    assert (upload.chat_id, upload.thread_id) == (GROUP, TOPIC)
    assert upload.reply_to == asked["message_id"]
    assert bot.openai.image_requests()[-1].body["prompt"] == "a red lighthouse"
    assert bot.openai.chat_requests() == []  # drawn, not chatted about

    await bot.deliver(text_message("/image a blue whale"))  # and in a private chat
    await wait_for(lambda: len(bot.tg.uploads) == 2)
    upload = bot.tg.uploads[1]
    assert (upload.method, upload.chat_id, upload.thread_id) == ("sendPhoto", CHAT, None)
    assert upload.data.startswith(PNG_MAGIC)


async def test_a_voice_note_is_heard_and_a_pdf_is_read(bot: TelegramBot) -> None:
    voice = ogg()
    bot.openai.transcripts[voice] = "remind me what a lighthouse does"
    note = bot.tg.add_file(voice, kind="voice")
    await bot.deliver(media_message({"voice": bot.tg.voice(note)}))
    heard, answer = await bot.answers(CHAT, 2)
    assert heard == "┃ 🎤 <i>remind me what a lighthouse does</i>"  # the quote, as HTML allows
    assert answer == "echo: remind me what a lighthouse does"
    upload = bot.openai.transcription_requests()[-1].upload
    assert upload is not None and upload.data == voice and upload.filename.endswith(".ogg")

    report = bot.tg.add_file(pdf("Revenue grew 12 percent"), name="report.pdf",
                             mime_type="application/pdf")  # fmt: skip
    await bot.deliver(media_message({"document": bot.tg.document(report)},
                                    caption="what does the report say?"))  # fmt: skip
    answers = await bot.answers(CHAT, 3)
    assert answers[2].startswith("echo: what does the report say?")
    said = bot.openai.chat_requests()[-1].messages[-1]["content"]
    assert said.startswith("what does the report say?") and "Revenue grew 12 percent" in said


async def test_bad_files_get_clear_replies_and_the_next_message_is_answered(
    bot: TelegramBot,
) -> None:
    # announced larger than media.max_bytes: refused before getFile or any download
    huge = bot.tg.add_file(png(), name="huge.png", mime_type="image/png",
                           file_size=MAX_BYTES + 1)  # fmt: skip
    await bot.deliver(media_message({"document": bot.tg.document(huge)}))
    [refused] = await bot.answers(CHAT, 1)
    assert "huge.png" in refused and "larger than" in refused
    assert bot.tg.calls_of("getFile") == [] and bot.tg.downloads == []

    fake = bot.tg.add_file(FAKE_IMAGE, name="fake.png", mime_type="image/png")
    await bot.deliver(media_message({"document": bot.tg.document(fake)}))
    answers = await bot.answers(CHAT, 2)
    assert "fake.png" in answers[1] and "not an image I can read" in answers[1]

    broken = bot.tg.add_file(png(), name="broken.png", mime_type="image/png")
    bot.tg.fail_download(500)
    await bot.deliver(media_message({"document": bot.tg.document(broken)}))
    answers = await bot.answers(CHAT, 3)
    assert "couldn't download" in answers[2] and "broken.png" in answers[2]
    assert bot.openai.chat_requests() == []  # nothing was left to ask the model

    await bot.deliver(text_message("hello again"))
    answers = await bot.answers(CHAT, 4)
    assert answers[3] == "echo: hello again"
