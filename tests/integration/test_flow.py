"""Flow under load: how many answers are written at once is ours to bound (limits.max_in_flight,
every platform alike), not one SDK's default, and the messages that wait are seen in /metrics.

Before: python-telegram-bot's `concurrent_updates(True)` let 256 updates run at once, so with
300 slow conversations the last 44 waited a whole answer before their model request.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import wait_for

SLOW = 3.0  # seconds before the model's first token (within the test chunk_timeout)


async def _telegram_app(
    tg: FakeTelegram, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path,
    **limits: int,
) -> BotApp:  # fmt: skip
    telegram = {"poll_timeout": 1, "drafts": False, "max_rate": 100_000, "group_max_rate": 100_000}
    settings = make_settings(key_prefix, tmp_path, platforms={"telegram": telegram}, limits=limits,
                             llm={"chunk_timeout": 2 * SLOW})  # fmt: skip
    secrets = Secrets(telegram_bot_token=tg.token, telegram_api_url=tg.api_url,
                      openai_base_url=fake_openai.base_url)  # fmt: skip
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    return app


async def test_300_slow_telegram_conversations_all_reach_the_model_at_once(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    fake_openai.default = Reply(ttft=SLOW)
    chats = range(2000, 2300)
    async with FakeTelegram() as tg:
        app = await _telegram_app(tg, fake_openai, redis, key_prefix, tmp_path)
        try:
            for chat in chats:
                tg.update(text_message(f"question {chat}", chat_id=chat, from_id=chat))
            await wait_for(lambda: all(tg.sent_texts(c) for c in chats), timeout=30)
        finally:
            await app.stop()
    arrivals = [r.at for r in fake_openai.chat_requests()]
    assert max(arrivals) - min(arrivals) < SLOW  # none waited for another's answer


async def test_max_in_flight_bounds_answers_and_the_waiting_show_in_metrics(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    fake_openai.default = Reply(ttft=SLOW)
    chats = range(3000, 3010)
    async with FakeTelegram() as tg, aiohttp.ClientSession() as session:
        app = await _telegram_app(tg, fake_openai, redis, key_prefix, tmp_path, max_in_flight=4)

        async def waiting() -> float:
            url = f"http://127.0.0.1:{app.port}/metrics"
            async with session.get(url) as response:
                found = re.search(r'chatbot_messages_waiting\{for="slot"\} (\S+)',
                                  await response.text())  # fmt: skip
            return float(found.group(1)) if found else -1

        try:
            for chat in chats:
                tg.update(text_message(f"question {chat}", chat_id=chat, from_id=chat))
            await wait_for(lambda: len(fake_openai.chat_requests()) == 4)
            await wait_for(lambda: _equals(waiting(), 6))
            assert len(fake_openai.chat_requests()) == 4  # the other six wait for a slot
            await wait_for(lambda: all(tg.sent_texts(c) for c in chats), timeout=30)
            assert await waiting() == 0
        finally:
            await app.stop()
    starts = sorted(r.at for r in fake_openai.chat_requests())
    assert starts[4] - starts[0] >= SLOW * 0.9  # the fifth began when a first answer ended


async def _equals(value: object, expected: float) -> bool:
    return await value == expected  # type: ignore[misc]
