"""Intake loops that meet bad data or die anyway: the bad event is skipped, a stopped loop is
restarted, /readyz says 503 while it is down, /metrics counts the restart (issue 15, 3 and 4)."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from bots.app import BotApp
from tests.fakes.discord import BOT_ID, CHANNEL, FakeDiscord, snowflake
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import wait_for
from tests.integration.test_discord import _settings as discord_settings
from tests.integration.test_discord import _start as start_discord
from tests.integration.test_telegram import TOKEN, TelegramBot
from tests.integration.test_telegram import _settings as telegram_settings
from tests.integration.test_telegram import _start as start_telegram


async def get(app: BotApp, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{app.port}{path}") as response,
    ):
        return response.status, await response.text()


async def readyz_is(app: BotApp, status: int) -> bool:
    return (await get(app, "/readyz"))[0] == status


async def restarts(app: BotApp, platform: str) -> float:
    _, metrics = await get(app, "/metrics")
    prefix = f'chatbot_intake_restarts_total{{platform="{platform}"}} '
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_malformed_updates_are_skipped_and_polling_goes_on(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):  # fmt: skip
    async with FakeTelegram(TOKEN) as tg:
        settings = telegram_settings(key_prefix, tmp_path)
        app = await start_telegram(tg, fake_openai, redis, settings, webhook=False)
        try:
            bot = TelegramBot(app, tg, webhook=False)
            tg.raw_update({"update_id": "x"})
            bad = [tg.next_update_id(), tg.next_update_id(), tg.next_update_id()]
            tg.raw_update({"update_id": bad[0], "message": "str"})
            tg.raw_update({"update_id": bad[1], "message": {"chat": 5}})
            tg.raw_update({"update_id": bad[2], "message": [1, 2]})
            await bot.deliver(text_message("after the junk", chat_id=42))
            await wait_for(lambda: bot.finals(42) == ["echo: after the junk"])
            await wait_for(lambda: tg.updates == [])  # the offset moved past every bad one
            assert await readyz_is(app, 200)
            assert await restarts(app, "telegram") == 0
        finally:
            await app.stop()
    no_tracebacks(caplog)
    skipped = [r for r in caplog.records if "malformed update" in r.getMessage()]
    assert len(skipped) == 1  # throttled: one line for the three


async def test_a_polling_loop_that_dies_is_restarted(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeTelegram(TOKEN) as tg:
        settings = telegram_settings(key_prefix, tmp_path)
        app = await start_telegram(tg, fake_openai, redis, settings, webhook=False)
        try:
            assert await readyz_is(app, 200)
            tg.fail("getUpdates", 401, "Unauthorized")  # ends PTB's loop for good
            await wait_for(lambda: readyz_is(app, 503))
            await wait_for(lambda: readyz_is(app, 200))
            assert await restarts(app, "telegram") == 1
            bot = TelegramBot(app, tg, webhook=False)
            await bot.deliver(text_message("are you back?", chat_id=42))
            await wait_for(lambda: bot.finals(42) == ["echo: are you back?"])
        finally:
            await app.stop()


async def test_network_errors_on_polling_are_retried_without_a_restart(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):  # fmt: skip
    """A reset or a 5xx from the Bot API is tried again after a short backoff, as PTB's own
    Updater did: no restart, no 503 from /readyz, one log line for several failures."""
    async with FakeTelegram(TOKEN) as tg:
        settings = telegram_settings(key_prefix, tmp_path)
        app = await start_telegram(tg, fake_openai, redis, settings, webhook=False)
        try:
            for _ in range(3):
                tg.fail("getUpdates", 502, "Bad Gateway")
            bot = TelegramBot(app, tg, webhook=False)
            await bot.deliver(text_message("still there?", chat_id=42))
            await wait_for(lambda: bot.finals(42) == ["echo: still there?"], timeout=10)
            assert not tg.failures["getUpdates"]  # all three were met
            assert await restarts(app, "telegram") == 0
            assert await readyz_is(app, 200)
        finally:
            await app.stop()
    failed = [r for r in caplog.records if "getUpdates failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    no_tracebacks(caplog)


@pytest.mark.parametrize("frame", ["MESSAGE_CREATE without its fields", "not JSON"])
async def test_a_bad_gateway_frame_restarts_the_gateway(
    frame: str, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):  # fmt: skip
    caplog.set_level(logging.WARNING)
    async with FakeDiscord() as discord:
        app = await start_discord(
            discord, fake_openai, redis, discord_settings(key_prefix, tmp_path)
        )
        try:
            assert await readyz_is(app, 200)
            if frame == "not JSON":
                await discord.send_raw("{not json")
            else:
                await discord.dispatch("MESSAGE_CREATE", {"id": snowflake(), "channel_id": CHANNEL})
            await wait_for(lambda: readyz_is(app, 503))
            await wait_for(lambda: readyz_is(app, 200))
            assert await restarts(app, "discord") == 1
            await discord.user_says(f"<@{BOT_ID}> still there?", mention_bot=True)
            await wait_for(lambda: discord.texts_in(CHANNEL) == ["echo: still there?"])
        finally:
            await app.stop()
    stopped = [r for r in caplog.records if "intake stopped" in r.getMessage()]
    assert len(stopped) == 1
    no_tracebacks(caplog)
