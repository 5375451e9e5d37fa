"""`chatbot run` on Slack, Telegram and Discord at once, killed with SIGKILL mid-answer and
started again: every message being answered is answered after the restart, exactly once.

The bot is the real command in its own process; the fake platforms and the fake model run
here, so they outlive the kill the way the real platforms would.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml
from redis.asyncio import Redis

from core.config import Secrets
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, driving, running_fakes, secret_env
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import (
    answers_200,
    bot_process_env,
    journal_entries,
    journal_owners_gone,
    wait_for,
)
from tests.redis_server import free_port

PLATFORMS = ("slack", "telegram", "discord")
RESTART_NOTE = "restarted while answering"


def _env(secrets: Secrets, redis_url: str, port: int) -> dict[str, str]:
    return bot_process_env(**secret_env(secrets), REDIS_URL=redis_url, CHATBOT_PORT=str(port))


@asynccontextmanager
async def chatbot_run(
    config: Path, env: dict[str, str], port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m bots run`, ready once /readyz says so; killed on exit if still running."""
    log = (config.parent / f"bot-{port}-{len(os.listdir(config.parent))}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "run", "--config", str(config),
        stdout=log, stderr=log, env=env, cwd=config.parent,
    )  # fmt: skip

    try:
        await wait_for(lambda: answers_200(f"http://127.0.0.1:{port}/readyz"), timeout=30,
                       every=0.1)  # fmt: skip
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def test_sigkill_mid_answer_on_every_platform_is_answered_once_after_restart(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = make_settings(
        key_prefix, tmp_path, platforms=drive_settings_overrides(),
        redis={"key_prefix": key_prefix, "heartbeat_ttl": 1, "lock_ttl": 1},
        streaming={"edit_interval": 0.2},
    )  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    port = free_port()
    for _ in PLATFORMS:  # slow answers: the kill lands while all three are streaming
        fake_openai.push(Reply(text="never finished " * 30, ttft=0.1, tokens_per_second=10))

    async with running_fakes(fake_openai) as fakes:
        env = _env(fakes.secrets, redis_url, port)
        bot = Bot(None, settings, fake_openai, fakes.slack, fakes.telegram, fakes.discord,
                  port=port)  # fmt: skip
        async with driving(bot):
            async with chatbot_run(config, env, port) as process:
                for number, platform in enumerate(PLATFORMS):
                    await bot.drivers[platform].say(number, f"question {number} on {platform}")

                def all_streaming() -> bool:
                    return all(
                        any("never finished" in a for a in bot.drivers[p].answers(n))
                        for n, p in enumerate(PLATFORMS)
                    )

                await wait_for(all_streaming, timeout=20)
                process.kill()
                await process.wait()
            assert len(await journal_entries(redis, key_prefix)) == len(PLATFORMS)
            shown_before = {p: bot.drivers[p].answers(n) for n, p in enumerate(PLATFORMS)}

            await wait_for(lambda: journal_owners_gone(redis, key_prefix), timeout=10, every=0.1)
            async with chatbot_run(config, env, port):

                def answered(number: int, platform: str) -> bool:
                    expected = f"echo: question {number} on {platform}"
                    return any(expected in a for a in bot.drivers[platform].answers(number))

                await wait_for(lambda: all(answered(n, p) for n, p in enumerate(PLATFORMS)),
                               timeout=30)  # fmt: skip

                async def journal_empty() -> bool:  # each answer is recorded just after it shows
                    return len(await journal_entries(redis, key_prefix)) == 0

                await wait_for(journal_empty, timeout=10)
            for number, platform in enumerate(PLATFORMS):
                answers = bot.drivers[platform].answers(number)
                expected = f"echo: question {number} on {platform}"
                assert sum(expected in a for a in answers) == 1, (platform, answers)
                # what was shown before the kill stays; then one note and the one answer
                before = shown_before[platform]
                assert answers[: len(before)] == before, (platform, answers)
                new = answers[len(before) :]
                assert len(new) == 2 and RESTART_NOTE in new[0] and expected in new[1], new
    assert len(fake_openai.chat_requests()) == 2 * len(PLATFORMS)  # each asked again once
