"""Telegram's rate limiter under a tight budget, through the fake Bot API: final messages go
first, drafts, partial edits and typing only from what is left, per-chat limits hold, and
`retry_after` is honoured (adapters/telegram_limits.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram import Call, FakeTelegram, text_message
from tests.helpers import wait_for
from tests.integration.test_telegram import GROUP, TOKEN, TelegramBot, _settings, _start

StartBot = Callable[..., AsyncIterator[TelegramBot]]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def start(
    tg: FakeTelegram, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """`await start(max_rate=..., ...)`: the bot on a webhook with these Telegram settings."""
    apps = []

    async def run(**telegram: Any) -> TelegramBot:
        settings = _settings(key_prefix, tmp_path, **telegram)
        app = await _start(tg, fake_openai, redis, settings, webhook=True)
        apps.append(app)
        return TelegramBot(app, tg, True)

    yield run
    for app in apps:
        await app.stop()


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def in_chat(tg: FakeTelegram, chat_id: int) -> list[Call]:
    return [c for c in tg.calls if str(c.params.get("chat_id")) == str(chat_id)]


def most_in_a_window(calls: list[Call], window: float) -> int:
    """The most calls that arrived within any `window` seconds."""
    times = sorted(c.at for c in calls)
    return max((sum(1 for t in times[i:] if t - start < window)
                for i, start in enumerate(times)), default=0)  # fmt: skip


async def test_finals_go_first_when_many_answers_stream_on_a_tight_budget(
    start: Callable[..., Any], tg: FakeTelegram, fake_openai: FakeOpenAI
):
    """24 private chats stream at once on 10 calls/s; their answers end 0.2 s apart, so the
    finals alone need half the budget and the drafts would take all of it. Each final must
    reach Telegram promptly after its answer is complete, not behind a queue of drafts."""
    chats, rate = 24, 10
    fake_openai.default = Reply(tokens_per_second=10)
    bot = await start(max_rate=rate)
    expected = {1000 + i: f"echo: c{i} {words(4 + 2 * i)}" for i in range(chats)}
    await asyncio.gather(*(bot.deliver(text_message(text.removeprefix("echo: "), chat_id=chat))
                           for chat, text in expected.items()))  # fmt: skip
    await wait_for(lambda: all(bot.finals(c) == [t] for c, t in expected.items()), timeout=20)

    finals = {int(c.params["chat_id"]): c.at for c in tg.calls_of("sendMessage")}
    late = []
    for request in fake_openai.chat_requests():
        chat = 1000 + int(request.messages[-1]["content"].split()[0].removeprefix("c"))
        late.append(finals[chat] - request.done)
    assert max(late) < 1.0, sorted(late)[-5:]  # under the old limiter: 2-5 s behind the drafts
    drafted = {int(c.params["chat_id"]) for c in tg.calls_of("sendMessageDraft")}
    assert len(drafted) >= chats // 2  # streaming still shows, from the budget left over
    assert most_in_a_window(tg.calls_of("sendMessage", "sendMessageDraft", "sendChatAction"),
                            1.0) <= 2 * rate  # a full bucket, then the rate  # fmt: skip


async def test_group_limit_holds_and_keeps_the_last_token_for_the_final(
    start: Callable[..., Any], tg: FakeTelegram, fake_openai: FakeOpenAI
):
    """A group may take 5 calls a minute here. Partial edits stop while one is left, so the
    final edit goes at once instead of waiting out the minute."""
    fake_openai.push(Reply(text=words(20), tokens_per_second=10))
    bot = await start(group_max_rate=5)
    await bot.deliver(text_message("/ask stream", chat_id=GROUP, kind="supergroup"))
    await wait_for(lambda: bot.finals(GROUP) == [words(20)], timeout=6)
    calls = in_chat(tg, GROUP)
    assert len(calls) <= 5, [c.method for c in calls]
    assert calls[-1].method == "editMessageText" and calls[-1].params["parse_mode"] == "HTML"


async def test_private_chat_stays_near_one_call_per_second(
    start: Callable[..., Any], tg: FakeTelegram, fake_openai: FakeOpenAI
):
    """Drafts every 50 ms are offered; a private chat gets bursts of 3, then about 1/s."""
    fake_openai.push(Reply(text=words(30), tokens_per_second=10))
    bot = await start()
    await bot.deliver(text_message("hello", chat_id=77))
    await wait_for(lambda: bot.finals(77) == [words(30)], timeout=8)
    calls = in_chat(tg, 77)
    assert tg.calls_of("sendMessageDraft")  # still streaming
    for window in (0.5, 1.0, 2.0):
        assert most_in_a_window(calls, window) <= 3 + window, [c.method for c in calls]


async def test_retry_after_is_honoured_and_the_final_still_arrives(
    start: Callable[..., Any], tg: FakeTelegram, fake_openai: FakeOpenAI
):
    """Telegram answers 429 (retry after 1 s) to a draft and to the final message: nothing
    is sent for that second, the refused draft is not resent (the next draft carries the
    whole text), and the final message is sent again after the wait."""
    fake_openai.push(Reply(text=words(12), tokens_per_second=10))
    tg.flood("sendMessageDraft", retry_after=1)
    tg.flood("sendMessage", retry_after=1)
    bot = await start()
    await bot.deliver(text_message("hello", chat_id=88))
    await wait_for(lambda: bot.finals(88) == [words(12)], timeout=10)
    sends, drafts = tg.calls_of("sendMessage"), tg.calls_of("sendMessageDraft")
    assert len(sends) == 2 and sends[1].at - sends[0].at >= 1.0
    texts = [c.params["text"] for c in drafts]
    assert len(texts) == len(set(texts)), texts  # the refused draft was not retried
    for refused in (drafts[0], sends[0]):
        during = [c for c in tg.calls if refused.at + 0.1 < c.at < refused.at + 1.0]
        assert not during, [c.method for c in during]
