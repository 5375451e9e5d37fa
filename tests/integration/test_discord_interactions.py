"""Every interaction gets an answer within Discord's 3 s, an apology at least: slash commands
whose options do not match the command the bot registered, as a stale registration delivers
them (issue 15, item 9)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.discord_commands import APOLOGY
from tests.fakes.discord import CHANNEL, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import wait_for
from tests.integration.test_discord import _settings, _start

STALE: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "an integer for the question": ("ask", [{"name": "question", "type": 4, "value": 5}]),
    "no options": ("ask", []),
    "an unknown option": ("ask", [{"name": "prompt", "type": 3, "value": "hi"}]),
    "50 options": ("ask", [{"name": f"o{i}", "type": 3, "value": "x"} for i in range(50)]),
    "the question twice": ("ask", [{"name": "question", "type": 3, "value": "a"}] * 2),
    "a command the bot does not have": ("summarise", []),
}


@pytest.fixture
async def discord(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        app = await _start(fake, fake_openai, redis, _settings(key_prefix, tmp_path))
        try:
            yield fake
        finally:
            await app.stop()


@pytest.mark.parametrize("case", list(STALE))
async def test_a_stale_slash_command_gets_an_apology_in_time(
    case: str, discord: FakeDiscord, fake_openai: FakeOpenAI
):
    name, options = STALE[case]
    started = time.monotonic()
    sent = await discord.slash(name, options)
    callback = f"/interactions/{sent['id']}/"
    await wait_for(lambda: discord.texts_in(CHANNEL) == [APOLOGY])
    callbacks = discord.calls_to("POST", callback)
    assert len(callbacks) == 1 and callbacks[0].at - started < 3
    assert fake_openai.chat_requests() == []
    await discord.slash("ask", {"question": "and now?"})  # the tree still works
    await wait_for(lambda: discord.texts_in(CHANNEL) == [APOLOGY, "echo: and now?"])
