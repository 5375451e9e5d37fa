"""Telegram, end to end: the real python-telegram-bot against the fake Bot API, a real Redis,
the fake OpenAI server. Most cases run over both transports (long polling and webhook)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from adapters.base import AdapterStartError
from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram import (
    BOT_USERNAME,
    FakeTelegram,
    bot_message,
    mention_entity,
    text_message,
)
from tests.helpers import wait_for

TOKEN = "123456:TEST-token"
SECRET = "webhook-secret-value"
GROUP = -1001234


class TelegramBot:
    """The bot under test and how to talk to it."""

    def __init__(self, app: BotApp, tg: FakeTelegram, webhook: bool) -> None:
        self.app, self.tg, self.webhook = app, tg, webhook

    async def deliver(self, message: dict[str, Any], *, secret: str | None = SECRET) -> int:
        """The user says something: Telegram queues it or POSTs it to the webhook."""
        update = self.tg.update(message)
        if not self.webhook:
            return 200
        self.tg.updates.remove(update)
        return await self.post(update, secret=secret)

    async def post(self, update: dict[str, Any], *, secret: str | None = SECRET) -> int:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        url = f"http://127.0.0.1:{self.app.port}/telegram/webhook"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=update, headers=headers) as response,
        ):
            return response.status

    def finals(self, chat_id: int) -> list[str]:
        return self.tg.sent_texts(chat_id)


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


def _settings(key_prefix: str, tmp_path: Path, **telegram: Any):
    options = {"poll_timeout": 1, "group_edit_interval": 0.05, "group_max_rate": 10_000}
    return make_settings(key_prefix, tmp_path, platforms={"telegram": {**options, **telegram}})


async def _start(
    tg: FakeTelegram, fake_openai: FakeOpenAI, redis: Redis, settings, *, webhook: bool
) -> BotApp:
    secrets = Secrets(
        telegram_bot_token=TOKEN,
        telegram_api_url=tg.api_url,
        telegram_webhook_url="https://bot.example/telegram/webhook" if webhook else None,
        telegram_webhook_secret=SECRET if webhook else None,
        openai_base_url=fake_openai.base_url,
    )
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    return app


@pytest.fixture(params=["polling", "webhook"])
async def bot(
    request: pytest.FixtureRequest,
    tg: FakeTelegram,
    fake_openai: FakeOpenAI,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> AsyncIterator[TelegramBot]:
    webhook = request.param == "webhook"
    app = await _start(tg, fake_openai, redis, _settings(key_prefix, tmp_path), webhook=webhook)
    try:
        yield TelegramBot(app, tg, webhook)
    finally:
        await app.stop()


async def test_private_chat_streams_a_draft_then_sends_the_answer(
    bot: TelegramBot, fake_openai: FakeOpenAI
):
    fake_openai.push(Reply(text="one two three four five six", tokens_per_second=40))
    await bot.deliver(text_message("hello there", chat_id=42))
    await wait_for(lambda: bot.finals(42) == ["one two three four five six"])
    drafts = bot.tg.calls_of("sendMessageDraft")
    assert drafts and all(int(c.params["chat_id"]) == 42 for c in drafts)
    final = bot.tg.calls_of("sendMessage")[-1]
    assert final.params["parse_mode"] == "HTML"
    assert bot.tg.calls_of("sendChatAction")[0].params["action"] == "typing"


async def test_group_mention_is_answered_as_a_reply(bot: TelegramBot, fake_openai: FakeOpenAI):
    text = f"hey @{BOT_USERNAME} what's up?"
    message = text_message(text, chat_id=GROUP, kind="supergroup",
                           entities=[mention_entity(text, "@" + BOT_USERNAME)])  # fmt: skip
    await bot.deliver(message)
    await wait_for(lambda: bot.finals(GROUP) == ["echo: hey what's up?"])
    first = bot.tg.calls_of("sendMessage")[0]
    assert first.params["reply_parameters"]["message_id"] == message["message_id"]
    assert fake_openai.chat_requests()[-1].messages[-1]["content"] == "hey what's up?"
    assert not bot.tg.calls_of("sendMessageDraft")  # drafts are for private chats only


async def test_group_reply_to_the_bot_is_answered_and_chatter_ignored(
    bot: TelegramBot, fake_openai: FakeOpenAI
):
    await bot.deliver(text_message("just chatting among humans", chat_id=GROUP, kind="supergroup"))
    await bot.deliver(text_message("/help@SomeOtherBot", chat_id=GROUP, kind="supergroup"))
    await bot.deliver(text_message("and you?", chat_id=GROUP, kind="supergroup",
                                   reply_to=bot_message(GROUP, 77)))  # fmt: skip
    await wait_for(lambda: bot.finals(GROUP) == ["echo: and you?"])
    assert len(fake_openai.chat_requests()) == 1  # the chatter never reached the model


async def test_ask_addressed_to_the_bot_by_name(bot: TelegramBot, fake_openai: FakeOpenAI):
    await bot.deliver(
        text_message(f"/ask@{BOT_USERNAME} capital of France?", chat_id=GROUP, kind="supergroup")
    )
    await wait_for(lambda: bot.finals(GROUP) == ["echo: capital of France?"])


async def test_forum_topics_are_separate_conversations(bot: TelegramBot, fake_openai: FakeOpenAI):
    await bot.deliver(text_message("/ask topic one secret", chat_id=GROUP, kind="supergroup",
                                   topic=11))  # fmt: skip
    await wait_for(lambda: len(bot.finals(GROUP)) == 1)
    await bot.deliver(text_message("/ask topic two", chat_id=GROUP, kind="supergroup", topic=22))
    await wait_for(lambda: len(bot.finals(GROUP)) == 2)
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages]
    assert "topic one secret" not in sent
    threads = [int(c.params["message_thread_id"]) for c in bot.tg.calls_of("sendMessage")]
    assert threads == [11, 22]


async def test_commands_registered_and_answered(bot: TelegramBot, fake_openai: FakeOpenAI):
    registered = bot.tg.calls_of("setMyCommands")[0].params["commands"]
    assert {c["command"] for c in registered} == {
        "ask", "reset", "persona", "model", "image", "voice", "help", "start"
    }  # fmt: skip
    await bot.deliver(text_message("/start", chat_id=42))
    await wait_for(lambda: len(bot.finals(42)) == 1)
    assert "Hi! I'm a chat bot" in bot.finals(42)[0]
    await bot.deliver(text_message("/reset", chat_id=42))
    await wait_for(lambda: len(bot.finals(42)) == 2)
    assert "forgotten" in bot.finals(42)[1]
    assert fake_openai.chat_requests() == []


async def test_duplicate_update_is_answered_once(bot: TelegramBot, fake_openai: FakeOpenAI):
    message = text_message("only once please", chat_id=42)
    update = bot.tg.update(message)
    if bot.webhook:
        bot.tg.updates.remove(update)
        assert await bot.post(update) == 200
        assert await bot.post(update) == 200
    else:
        bot.tg.updates.append(dict(update))  # getUpdates hands it out twice
    await bot.deliver(text_message("next", chat_id=42))
    await wait_for(lambda: len(bot.finals(42)) == 2)
    assert sorted(bot.finals(42)) == ["echo: next", "echo: only once please"]
    assert len(fake_openai.chat_requests()) == 2


async def test_group_answer_streams_by_edits_then_final_html(
    bot: TelegramBot, fake_openai: FakeOpenAI
):
    words = " ".join(f"**w{i}**" for i in range(30))
    fake_openai.push(Reply(text=words, tokens_per_second=200))
    await bot.deliver(text_message("/ask stream please", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: any("<b>w29</b>" in t for t in bot.finals(GROUP)))
    edits = bot.tg.calls_of("editMessageText")
    assert len(edits) >= 2
    assert edits[-1].params["parse_mode"] == "HTML"
    texts = [c.params["text"] for c in edits]
    assert len(texts) == len(set(texts))  # never an edit that changes nothing


async def test_rejected_markup_is_resent_as_plain_text(bot: TelegramBot, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="a < b & *unclosed"))
    bot.tg.fail("sendMessage", 400, "Bad Request: can't parse entities: unsupported start tag")
    await bot.deliver(text_message("/ask compare", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: bot.finals(GROUP) == ["a < b & *unclosed"])


async def test_long_answer_is_split_under_4096(bot: TelegramBot, fake_openai: FakeOpenAI):
    paragraph = "word " * 150
    fake_openai.push(Reply(text="\n\n".join([paragraph] * 12), words_per_chunk=50))
    await bot.deliver(text_message("/ask essay", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: sum(len(t) for t in bot.finals(GROUP)) >= 9000, timeout=10)
    assert len(bot.finals(GROUP)) >= 3
    assert all(0 < len(t) <= 4096 for t in bot.finals(GROUP))


async def test_a_long_code_answer_arrives_as_html_in_every_part(
    bot: TelegramBot, fake_openai: FakeOpenAI
):
    code = "\n".join(f"if a[{i}] < b and c > d: print('<&>', {i})" for i in range(240))
    fake_openai.push(Reply(text=f"Here:\n\n```python\n{code}\n```", words_per_chunk=200))
    await bot.deliver(text_message("/ask code", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: any("239)" in t for t in bot.finals(GROUP)), timeout=10)
    finals = bot.finals(GROUP)
    assert len(finals) >= 3
    assert all('<pre><code class="language-python">' in t for t in finals)
    posts = bot.tg.calls_of("sendMessage", "editMessageText")
    assert posts and all(c.params.get("parse_mode") == "HTML" for c in posts)


async def test_flood_wait_is_honoured_and_the_answer_arrives(
    bot: TelegramBot, fake_openai: FakeOpenAI
):
    bot.tg.flood("sendMessage", retry_after=1)
    await bot.deliver(text_message("/ask slow down", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: bot.finals(GROUP) == ["echo: slow down"], timeout=10)
    sends = bot.tg.calls_of("sendMessage")
    assert len(sends) >= 2 and sends[1].at - sends[0].at >= 0.9


async def test_webhook_secret_is_enforced(
    tg: FakeTelegram, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    app = await _start(tg, fake_openai, redis, _settings(key_prefix, tmp_path), webhook=True)
    try:
        bot = TelegramBot(app, tg, webhook=True)
        assert tg.webhook_url == "https://bot.example/telegram/webhook"
        assert tg.webhook_secret == SECRET
        assert await bot.deliver(text_message("forged", chat_id=42), secret=None) == 403
        assert await bot.deliver(text_message("forged", chat_id=42), secret="wrong") == 403
        assert await bot.post({"garbage": True}) == 400
        assert await bot.deliver(text_message("genuine", chat_id=42)) == 200
        await wait_for(lambda: bot.finals(42) == ["echo: genuine"])
        assert len(fake_openai.chat_requests()) == 1
    finally:
        await app.stop()


async def test_polling_mode_deletes_the_webhook(
    tg: FakeTelegram, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    app = await _start(tg, fake_openai, redis, _settings(key_prefix, tmp_path), webhook=False)
    await app.stop()
    assert tg.calls_of("deleteWebhook")


async def test_bad_token_is_a_clear_error_without_the_token(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeTelegram("999:other") as other:
        with pytest.raises(AdapterStartError) as info:
            await _start(other, fake_openai, redis, _settings(key_prefix, tmp_path), webhook=False)
    assert "TELEGRAM_BOT_TOKEN" in str(info.value)
    assert TOKEN not in str(info.value)
