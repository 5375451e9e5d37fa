"""The whole bot on Slack, Telegram and Discord at once, under load, with random faults.

Faults: model 429s, 500s and streams cut mid-answer; platform 429s and 5xx on send and
edit. Every user message must be answered exactly once (an answer, a partial answer with a
note, or an apology), and every conversation's history must hold every user message in
order. The short run is part of the suite; `RELIABILITY_FULL=1` runs the issue's full
load (200 conversations x 5 turns).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.taskdump import dump_tasks
from core.conversation.chat import APOLOGY
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, running_bot
from tests.fakes.openai_server import FakeOpenAI, Reply, echo_answer
from tests.helpers import wait_for

FULL = os.environ.get("RELIABILITY_FULL") == "1"
CONVERSATIONS = int(os.environ.get("RELIABILITY_CONVERSATIONS", 200 if FULL else 24))
TURNS = int(os.environ.get("RELIABILITY_TURNS", 5 if FULL else 3))
PLATFORMS = ("slack", "telegram", "discord")
CUT_NOTE = "cut short"


def _faulty_model(rng: random.Random) -> Any:
    def decide(body: dict[str, Any]) -> Reply:
        roll = rng.random()
        if roll < 0.10:
            return Reply("error", status=429, retry_after=0.05)
        if roll < 0.14:
            return Reply("error", status=500, retry_after=0.01)
        if roll < 0.18:
            return Reply("cut", text=echo_answer(body) + " and more words", after_chunks=2)
        return Reply(words_per_chunk=2)

    return decide


async def _platform_faults(bot: Bot, rng: random.Random, stop: asyncio.Event) -> None:
    """Now and then a platform answers 429 or 5xx to a send or an edit (one pending fault per
    kind at a time, so faults follow the traffic instead of piling up in quiet moments)."""
    faults = [
        (bot.slack.failures, "chat.update", lambda: bot.slack.fail("chat.update", retry_after=1)),
        (bot.slack.failures, "chat.postMessage",
         lambda: bot.slack.fail("chat.postMessage", error="internal_error", status=500)),
        (bot.telegram.failures, "editMessageText",
         lambda: bot.telegram.flood("editMessageText", retry_after=1)),
        (bot.discord.failures, "PATCH /channels",
         lambda: bot.discord.fail("PATCH /channels", 429, retry_after=0.3)),
        (bot.discord.failures, "POST /channels", lambda: bot.discord.fail("POST /channels", 502)),
    ]  # fmt: skip
    while not stop.is_set():
        pending, key, inject = rng.choice(faults)
        if not pending.get(key):
            inject()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5 + rng.random())


def _is_final(text: str, expected: str) -> bool:
    return text in (expected, APOLOGY) or CUT_NOTE in text


async def _conversation(bot: Bot, platform: str, number: int, latencies: list[float]) -> None:
    driver = bot.drivers[platform]
    for turn in range(TURNS):
        text = f"c{number} t{turn} on {platform}"
        started = time.monotonic()
        await driver.say(number, text)

        def answered(answers: list[str], turn: int = turn, text: str = text) -> bool:
            return len(answers) > turn and _is_final(answers[turn], f"echo: {text}")

        answers = await driver.wait_answers(number, answered, timeout=60)
        assert answered(answers), f"{platform} #{number} turn {turn}: {answers}\n{dump_tasks()}"
        latencies.append(time.monotonic() - started)


@pytest.mark.timeout(900)
async def test_every_message_answered_exactly_once_under_faults(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    rng = random.Random(20261124)
    fake_openai.decide = _faulty_model(rng)
    settings = make_settings(
        key_prefix, tmp_path,
        platforms=drive_settings_overrides(),
        llm={"max_retries": 3, "chunk_timeout": 2},
        streaming={"edit_interval": 0.2},
    )  # fmt: skip
    latencies: list[float] = []
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: print(dump_tasks()))
    async with running_bot(settings, redis, fake_openai) as bot:
        stop = asyncio.Event()
        faults = asyncio.create_task(_platform_faults(bot, rng, stop))
        plan = [(PLATFORMS[i % 3], i) for i in range(CONVERSATIONS)]
        await asyncio.gather(*(_conversation(bot, p, n, latencies) for p, n in plan))
        stop.set()
        await faults
        # let any straggler (a duplicate would be one) reach the fakes before counting
        await wait_for(lambda: bot.app.core is not None and bot.app.core.inflight.running == 0)

        sent = answered = duplicates = lost = apologies = cut = 0
        for platform, number in plan:
            answers = bot.drivers[platform].answers(number)
            sent += TURNS
            answered += min(len(answers), TURNS)
            duplicates += max(0, len(answers) - TURNS)
            lost += max(0, TURNS - len(answers))
            apologies += sum(a == APOLOGY for a in answers)
            cut += sum(CUT_NOTE in a for a in answers)
            for turn, answer in enumerate(answers[:TURNS]):
                expected = f"echo: c{number} t{turn} on {platform}"
                assert _is_final(answer, expected), (platform, number, turn, answer)
            assert bot.app.core is not None
            key = _conversation_key(bot, platform, number)
            history = (await bot.app.core.store.load(key)).history
            users = [t.content for t in history if t.role == "user"]
            assert users == [f"c{number} t{t} on {platform}" for t in range(TURNS)], users

    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)]
    print(
        f"\n{'sent':>6} {'answered':>8} {'dupes':>6} {'lost':>5} {'apologies':>9} "
        f"{'cut':>4} {'p50 s':>7} {'p99 s':>7}\n"
        f"{sent:>6} {answered:>8} {duplicates:>6} {lost:>5} {apologies:>9} {cut:>4} "
        f"{p50:>7.3f} {p99:>7.3f}"
    )
    assert answered == sent and duplicates == 0 and lost == 0
    assert fake_openai.chat_requests()  # the model was really used
    assert apologies + cut > 0  # the faults really happened


def _conversation_key(bot: Bot, platform: str, number: int) -> Any:
    from core.model import ContextKey

    if platform == "slack":
        key = ContextKey("slack", f"D{number:06d}", f"U{number:06d}", workspace="T0TEST")
    elif platform == "telegram":
        key = ContextKey("telegram", str(10_000 + number), str(10_000 + number))
    else:
        key = ContextKey("discord", str(950000000000000000 + number), "")
    return key.scoped(bot.settings.scope(platform))
