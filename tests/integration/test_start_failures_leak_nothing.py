"""A platform that refuses the bot at start leaves no socket behind.

An HTTP client left open holds a pooled connection until the garbage collector finds it,
and the ResourceWarning then lands on whichever test happens to be running. Here the
collector runs inside the test, so a leak fails the start path that made it.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.base import AdapterStartError
from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes import discord as fd
from tests.fakes import slack as fs
from tests.fakes import telegram as ft
from tests.fakes.openai_server import FakeOpenAI


def _fake_and_secrets(platform: str) -> tuple[AbstractAsyncContextManager[Any], Any]:
    """A fake platform, and a function from it to secrets with a token it refuses."""
    if platform == "telegram":
        return ft.FakeTelegram("999:other"), lambda fake: {
            "telegram_bot_token": "123:refused", "telegram_api_url": fake.api_url}  # fmt: skip
    if platform == "slack":
        return fs.FakeSlack(), lambda fake: {
            "slack_bot_token": "xoxb-refused", "slack_signing_secret": fs.SIGNING_SECRET,
            "slack_api_url": fake.api_url}  # fmt: skip
    return fd.FakeDiscord(), lambda fake: {
        "discord_bot_token": "refused.token", "discord_api_url": fake.api_url,
        "discord_gateway_url": fake.gateway_url}  # fmt: skip


async def _refused_start(platform: str, settings: Any, redis: Redis, openai: FakeOpenAI) -> str:
    """Start the bot against a platform that refuses its token; the error's message."""
    fake, secrets_for = _fake_and_secrets(platform)
    async with fake as server:
        secrets = Secrets(openai_base_url=openai.base_url, **secrets_for(server))
        app = BotApp(settings, secrets, redis=redis)
        try:
            await app.start()
        except AdapterStartError as exc:
            return str(exc)
    raise AssertionError(f"{platform} accepted a refused token")


@pytest.mark.parametrize("platform", ["telegram", "slack", "discord"])
async def test_refused_start_leaves_no_open_socket(
    platform: str, redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = make_settings(key_prefix, tmp_path)
    gc.collect()  # whatever earlier tests left is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        message = await _refused_start(platform, settings, redis, fake_openai)
        gc.collect()
    assert "refused" in message.lower() or "check" in message.lower()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_a_refused_socket_mode_start_leaves_no_open_session(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    """The bot token is good, the app token is not: the Web API session made for the bot
    token is closed with the failed start."""
    settings = make_settings(key_prefix, tmp_path)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with fs.FakeSlack() as slack:
            secrets = Secrets(
                openai_base_url=fake_openai.base_url,
                slack_api_url=slack.api_url,
                slack_bot_token=fs.BOT_TOKEN,
                slack_app_token="xapp-refused",
            )
            app = BotApp(settings, secrets, redis=redis)
            with pytest.raises(AdapterStartError, match="Slack refused SLACK_APP_TOKEN"):
                await asyncio.wait_for(app.start(), 10)  # slack-sdk alone retries for ever
            assert slack.calls_of("auth.test") and slack.calls_of("apps.connections.open")
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
