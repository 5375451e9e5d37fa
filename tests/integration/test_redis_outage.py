"""Redis goes away mid-conversation: the bot answers without history, then recovers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bots.assembly import build_core
from core.config import Secrets, Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import RecordingResponder, user_message
from tests.redis_server import RedisProcess


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def _history(fake: FakeOpenAI) -> list[str]:
    return [m["content"] for m in fake.chat_requests()[-1].messages if m["role"] != "system"]


async def test_answers_without_history_then_recovers(
    redis_process: RedisProcess,
    settings: Settings,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
):
    secrets = Secrets(openai_base_url=fake_openai.base_url, redis_url=redis_process.url)
    settings = settings.model_copy(  # a private standalone server, in cluster mode too
        update={"redis": settings.redis.model_copy(update={"mode": "standalone"})}
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets)
        await core.handler(user_message("before the outage"), RecordingResponder())

        redis_process.stop()
        caplog.set_level(logging.WARNING, logger="stores.redis.store")
        during = RecordingResponder()
        await core.handler(user_message("during the outage"), during)
        assert during.shown == "echo: during the outage"
        assert _history(fake_openai) == ["during the outage"]
        again = RecordingResponder()
        await core.handler(user_message("still down"), again)
        assert again.shown == "echo: still down"
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1  # logged once, not per call

        redis_process.start()
        after = RecordingResponder()
        await core.handler(user_message("after the outage"), after)
        assert after.shown == "echo: after the outage"
        assert _history(fake_openai) == [
            "before the outage",
            "echo: before the outage",
            "after the outage",
        ]
        assert any("is back" in r.getMessage() for r in caplog.records)
