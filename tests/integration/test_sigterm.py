"""SIGTERM at any moment of `chatbot run`: exit 0, nothing lost.

The handlers are installed before any platform starts. Telegram answers while Discord's
gateway is still not ready (the fake holds READY back); a SIGTERM then stops the start,
lets the answer in flight finish and record itself, and exits 0. Before, the handler came
only after every platform had started: the process died by the signal (exit -15).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from core.model import ContextKey
from stores.redis.keys import KeyBuilder
from tests.fakes.discord import TOKEN as DISCORD_TOKEN
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import answers_200, bot_process_env, wait_for
from tests.redis_server import free_port

ANSWER = "a slow answer that is still being written when the signal comes"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTelegram, FakeDiscord]]:
    async with FakeTelegram() as tg, FakeDiscord() as discord:
        discord.ready_gate.clear()  # Discord stays "starting" for the whole test
        yield tg, discord


@pytest.mark.parametrize("moment", ["server up, no platform yet", "answering on telegram"])
async def test_sigterm_while_starting_drains_and_exits_0(
    moment: str,
    fakes: tuple[FakeTelegram, FakeDiscord],
    fake_openai: FakeOpenAI,
    redis: Redis,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
):
    tg, discord = fakes
    answering = moment == "answering on telegram"
    if answering:
        fake_openai.push(Reply(text=ANSWER, ttft=0.2, tokens_per_second=15))
        tg.update(text_message("tell me slowly", chat_id=42))
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"redis:\n  key_prefix: {key_prefix}\nserver:\n  host: 127.0.0.1\n  port: {port}\n"
        "llm:\n  model: gpt-test\n  models: [gpt-test]\n  chunk_timeout: 5\n"
        "context:\n  tokenizer: estimate\nplatforms:\n  telegram:\n    poll_timeout: 1\n"
    )
    env = bot_process_env(
        OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test", REDIS_URL=redis_url,
        TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.api_url,
        DISCORD_BOT_TOKEN=DISCORD_TOKEN, DISCORD_API_URL=discord.api_url,
        DISCORD_GATEWAY_URL=discord.gateway_url,
    )  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        if answering:
            await wait_for(lambda: len(fake_openai.chat_requests()) == 1, timeout=30)
        else:
            await wait_for(lambda: answers_200(f"http://127.0.0.1:{port}/healthz"), timeout=30,
                           every=0.05)  # fmt: skip
        assert not discord.identified.is_set()  # still starting
        process.send_signal(signal.SIGTERM)
        err = await _stopped(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    if answering:
        assert tg.sent_texts(42) == [ANSWER]
        history = await redis.lrange(KeyBuilder(key_prefix).history(ContextKey("telegram", "42")),
                                     0, -1)  # fmt: skip
        assert len(history) == 2 and ANSWER in history[1].decode()


async def test_an_answer_outliving_the_grace_says_it_was_interrupted_then_comes_anew(
    fake_openai: FakeOpenAI, redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
):  # `redis`: the bot processes' keys under this test's prefix are deleted after it
    """The reader sees: the partial answer marked as interrupted, the restart note, the
    whole answer; never a cut answer without a word, then a different one."""
    long_answer = " ".join(f"word{i}" for i in range(60))
    fake_openai.push(
        Reply(text=long_answer, tokens_per_second=10),  # 6 s: outlives the grace
        Reply(text=long_answer),  # after the restart
    )
    async with FakeTelegram() as tg:
        port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"redis:\n  key_prefix: {key_prefix}\n  heartbeat_ttl: 1\n"
            f"server:\n  host: 127.0.0.1\n  port: {port}\n  shutdown_grace: 0.5\n"
            "llm:\n  model: gpt-test\n  models: [gpt-test]\n  chunk_timeout: 5\n"
            "context:\n  tokenizer: estimate\nplatforms:\n  telegram:\n    poll_timeout: 1\n"
        )
        env = bot_process_env(
            OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test",
            REDIS_URL=redis_url, TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.api_url,
        )  # fmt: skip

        async def run() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bots", "run", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
                cwd=tmp_path,
            )  # fmt: skip

        tg.update(text_message("tell me a long story", chat_id=42))
        first = await run()
        await wait_for(lambda: len(tg.calls_of("sendMessageDraft")) >= 3, timeout=30)
        first.send_signal(signal.SIGTERM)
        err = await _stopped(first)
        assert first.returncode == 0, err.decode()[-2000:]
        shown = tg.sent_texts(42)
        assert len(shown) == 1 and shown[0].startswith("word0") and "Interrupted" in shown[0]
        second = await run()  # takes the journaled message over once the heartbeat expired
        try:
            await wait_for(lambda: len(tg.sent_texts(42)) == 3, timeout=30)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.communicate(), 20)
    _, note, whole = tg.sent_texts(42)
    assert "restarted" in note
    assert whole == long_answer


async def _stopped(process: asyncio.subprocess.Process, within: float = 20) -> bytes:
    """The stderr of a bot stopping on SIGTERM. One that does not stop within `within`
    seconds fails the test with what each of its tasks awaited (SIGUSR1) and its last log."""
    talk = asyncio.ensure_future(process.communicate())
    try:
        _, err = await asyncio.wait_for(asyncio.shield(talk), within)
    except TimeoutError:
        process.send_signal(signal.SIGUSR1)  # the bot logs every task's stack
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(talk), 2)
        process.kill()
        _, err = await talk
        raise AssertionError(f"no exit {within}s after SIGTERM:\n{err.decode()[-6000:]}") from None
    return err
