"""Redis restarted in the middle of conversations on Slack, Telegram and Discord at once.

An answer streaming when Redis dies still reaches the user; a message while Redis is down is
answered (without history); after Redis is back (AOF on), history from before the outage is
used again. Nothing is answered twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bots.redis_conn import make_client
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, running_bot
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import wait_for
from tests.redis_server import RedisProcess

PLATFORMS = ("slack", "telegram", "discord")


async def _say_all(bot: Bot, turn: int) -> None:
    for number, platform in enumerate(PLATFORMS):
        await bot.drivers[platform].say(number, f"t{turn} from {platform}")


async def _answered_all(bot: Bot, turn: int) -> None:
    for number, platform in enumerate(PLATFORMS):
        expected = f"echo: t{turn} from {platform}"
        answers = await bot.drivers[platform].wait_answers(
            number, lambda a, e=expected: e in a, timeout=20
        )
        assert expected in answers, (platform, turn, answers)


async def test_conversations_survive_a_redis_restart(
    redis_process: RedisProcess, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = make_settings("restart", tmp_path, platforms=drive_settings_overrides(),
                             streaming={"edit_interval": 0.1})  # fmt: skip
    redis = make_client(redis_process.url)
    try:
        async with running_bot(settings, redis, fake_openai) as bot:
            await _say_all(bot, 1)
            await _answered_all(bot, 1)

            # turn 2 streams slowly; Redis dies while it does
            for _ in PLATFORMS:
                fake_openai.push(Reply(words_per_chunk=1, ttft=0.1, tokens_per_second=8))
            await _say_all(bot, 2)
            await wait_for(lambda: len(fake_openai.chat_requests()) == 6, timeout=10)
            await asyncio.to_thread(redis_process.stop)
            await _answered_all(bot, 2)

            await _say_all(bot, 3)  # Redis is down: answered without history
            await _answered_all(bot, 3)
            for request in fake_openai.chat_requests()[-3:]:
                users = [m["content"] for m in request.messages if m["role"] == "user"]
                assert len(users) == 1 and users[0].startswith("t3 "), users

            await asyncio.to_thread(redis_process.start)  # AOF brings turn 1 back
            await _say_all(bot, 4)
            await _answered_all(bot, 4)
            for request in fake_openai.chat_requests()[-3:]:
                users = [m["content"] for m in request.messages if m["role"] == "user"]
                assert users[0].startswith("t1 ") and users[-1].startswith("t4 "), users

            for number, platform in enumerate(PLATFORMS):
                answers = bot.drivers[platform].answers(number)
                assert answers == [f"echo: t{t} from {platform}" for t in (1, 2, 3, 4)], answers
    finally:
        await redis.aclose()
