"""Usage and limits: a rate limit shared by every bot process through Redis, a daily token
budget, /usage, and the allow/deny lists that stop a message before anything runs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bots.assembly import build_core
from core.policies.limits import NOT_ALLOWED
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory

RATE = {"messages_per_minute": 3}
ROOT = Path(__file__).parents[2]


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


async def test_rate_limit_is_shared_by_two_bots_on_one_redis(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    one, two = await build(limits=RATE), await build(limits=RATE)
    answers = []
    for core, channel in ((one, "a"), (two, "b"), (one, "c"), (two, "d")):
        responder = RecordingResponder()
        await core.handler(user_message(f"hi in {channel}", channel=channel, user="u1"), responder)
        answers.append(responder.shown)
    assert answers[:3] == ["echo: hi in a", "echo: hi in b", "echo: hi in c"]
    assert answers[3].startswith("You're sending messages faster than I can answer")
    assert "limit: 3 messages a minute" in answers[3]
    assert "Try again in 20 s" in answers[3] or "Try again in 19 s" in answers[3]
    assert len(fake_openai.chat_requests()) == 3  # the refused one never reached the model

    other = RecordingResponder()  # another user has a bucket of their own
    await two.handler(user_message("me too", channel="d", user="u2"), other)
    assert other.shown == "echo: me too"


async def test_rate_limit_is_shared_with_a_real_second_process(
    build: CoreFactory, fake_openai: FakeOpenAI, redis_url: str, key_prefix: str, tmp_path: Path
):
    here = await build(limits=RATE)
    for text in ("one", "two"):
        responder = RecordingResponder()
        await here.handler(user_message(text, user="console", channel="terminal"), responder)
        assert responder.shown == f"echo: {text}"

    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "redis": {"key_prefix": key_prefix},
                "llm": {"model": "gpt-test", "max_retries": 0},
                "limits": RATE,
            }
        )
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHATBOT_", "OPENAI_", "REDIS"))
    }
    if os.environ.get("CHATBOT_TEST_REDIS_MODE") == "cluster":
        env["CHATBOT_REDIS__MODE"] = "cluster"
    env.update(
        REDIS_URL=redis_url,
        OPENAI_API_KEY="sk-test-not-a-real-key",
        OPENAI_BASE_URL=fake_openai.base_url,
        PYTHONPATH=str(ROOT),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "chat",
        "--config",
        str(config),
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(b"three\nfour\n"), timeout=60)
    printed = out.decode()
    assert process.returncode == 0, err.decode()
    assert "bot> echo: three" in printed
    assert "bot> You're sending messages faster than I can answer" in printed
    assert "echo: four" not in printed

    back_here = RecordingResponder()
    await here.handler(user_message("five", user="console", channel="terminal"), back_here)
    assert back_here.shown.startswith("You're sending messages faster")


async def test_daily_budget_refuses_with_the_reset_time_and_usage_shows_it(
    build: CoreFactory, fake_openai: FakeOpenAI, redis
):
    core = await build(limits={"daily_tokens": 100})
    usage = {"prompt_tokens": 80, "completion_tokens": 30, "total_tokens": 110}
    fake_openai.push(Reply(text="a long answer", usage=usage))
    first = RecordingResponder()
    await core.handler(user_message("hello"), first)
    assert first.shown == "a long answer"

    refused = RecordingResponder()
    await core.handler(user_message("one more"), refused)
    assert refused.shown.startswith("You've used your daily budget of 100 tokens (110 today).")
    assert "It resets at 00:00 UTC, in " in refused.shown
    assert len(fake_openai.chat_requests()) == 1

    report = RecordingResponder()
    await core.handler(user_message("/usage"), report)
    assert "Today: 110 tokens (80 prompt, 30 answer)" in report.shown
    assert "This month: 110 tokens" in report.shown
    assert "Daily budget: 100 tokens, 0 left today" in report.shown

    assert core.usage is not None
    conversation = core.store.keys.usage(  # type: ignore[attr-defined]
        core.chat.conversation_key(user_message("x"))
    )
    assert await redis.hget(conversation, "total") == b"110"
    someone_else = RecordingResponder()
    await core.handler(user_message("/usage", user="u2"), someone_else)
    assert "Today: 0 tokens" in someone_else.shown


async def test_usage_is_estimated_when_the_server_reports_none(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build()
    fake_openai.push(Reply(text="x" * 400, send_usage=False))
    await core.handler(user_message("count me"), RecordingResponder())
    report = RecordingResponder()
    await core.handler(user_message("/usage"), report)
    # prompt: system (9) + message (7, with the name) by the estimate; answer: 400 bytes / 4
    assert "Today: 116 tokens (16 prompt, 100 answer)" in report.shown


async def test_deny_and_allow_lists_stop_messages_before_anything_runs(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(
        platforms={"console": {"deny_users": ["mallory"], "allow_channels": ["general"]}},
        intents=[{"name": "hi", "keywords": ["hello"], "template": "Hi!"}],
    )
    cases = [
        user_message("hello", user="mallory", channel="general"),  # an intent, denied user
        user_message("/help", user="mallory", channel="general"),  # a command, denied user
        user_message("question", user="alice", channel="random"),  # not an allowed channel
    ]
    for message in cases:
        responder = RecordingResponder()
        await core.handler(message, responder)
        assert responder.texts == [NOT_ALLOWED]
    assert fake_openai.chat_requests() == []

    allowed = RecordingResponder()
    await core.handler(user_message("question", user="alice", channel="general"), allowed)
    assert allowed.shown == "echo: question"


async def test_limits_and_cache_fail_open_when_redis_is_away(
    key_prefix, tmp_path, secrets, fake_openai: FakeOpenAI
):
    settings = make_settings(
        key_prefix,
        tmp_path,
        limits={"messages_per_minute": 1, "daily_tokens": 1},
        cache={"enabled": True},
        intents=[{"name": "hi", "keywords": ["hello"], "template": "Hi!", "cache": True}],
    )
    away = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=away)
        for text in ("first", "second"):
            responder = RecordingResponder()
            await core.handler(user_message(text), responder)
            assert responder.shown == f"echo: {text}"  # no history, but answered
        greeted = RecordingResponder()
        await core.handler(user_message("hello"), greeted)
        assert greeted.shown == "Hi!"
        usage = RecordingResponder()
        await core.handler(user_message("/usage"), usage)
        assert "Today: 0 tokens" in usage.shown
    await away.aclose()
