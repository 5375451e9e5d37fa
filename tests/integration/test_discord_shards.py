"""Discord gateway sharding, end to end: the real discord.py `AutoShardedClient` against the
fake gateway (which routes a guild's events to shard `(guild_id >> 22) % count` and DMs to
shard 0, as Discord does), a real Redis and the fake OpenAI server. One process may run every
shard; N processes, each with its own `shard_ids`, split the guilds and answer each message
once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord as discord_py
import pytest
from redis.asyncio import Redis

from adapters.discord import DiscordAdapter
from bots.app import BotApp
from core.config import ConfigError, Secrets, load_settings
from core.model import Message
from core.protocols import Handler, Responder
from tests.fakes.discord import (
    BOT_ID,
    CHANNEL,
    DM_CHANNEL,
    GUILD,
    TOKEN,
    FakeDiscord,
    guild_on_shard,
    shard_of,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import bot_process_env, wait_for
from tests.integration.test_discord import _settings, _start

SHARD_ENV = "CHATBOT_PLATFORMS__DISCORD__SHARD_IDS"
COUNT_ENV = "CHATBOT_PLATFORMS__DISCORD__SHARD_COUNT"


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(shard_count=2) as fake:
        assert shard_of(GUILD, 2) == 0
        yield fake


def _shard(key_prefix: str, tmp_path: Path, shard_id: int) -> Any:
    """One "process" of two: the same Redis keys, its own shard."""
    return _settings(key_prefix, tmp_path, shard_count=2, shard_ids=[shard_id])


def adapter_of(app: BotApp) -> DiscordAdapter:
    [adapter] = [a for a in app.adapters if isinstance(a, DiscordAdapter)]
    return adapter


def record(app: BotApp) -> list[str]:
    """The texts of the messages this process's Discord adapter hands to the core."""
    adapter, seen = adapter_of(app), []
    inner: Handler = adapter.handler

    async def recording(message: Message, responder: Responder) -> None:
        seen.append(message.text)
        await inner(message, responder)

    adapter.handler = recording
    return seen


async def test_one_process_with_both_shards_answers_in_guilds_of_both(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    other = discord.add_guild(guild_on_shard(1, 2))
    settings = _settings(key_prefix, tmp_path, shard_count=2, shard_ids=[0, 1])
    app = await _start(discord, fake_openai, redis, settings)
    try:
        assert sorted(discord.shards()) == [(0, 2), (1, 2)]
        assert adapter_of(app).ready()
        await discord.user_says(f"<@{BOT_ID}> on shard zero", mention_bot=True)
        await discord.user_says(f"<@{BOT_ID}> on shard one", mention_bot=True, channel_id=other)
        await wait_for(lambda: discord.texts_in(CHANNEL) == ["echo: on shard zero"])
        await wait_for(lambda: discord.texts_in(other) == ["echo: on shard one"])
    finally:
        await app.stop()


async def test_two_processes_split_the_shards_and_answer_each_message_once(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    other = discord.add_guild(guild_on_shard(1, 2))
    first = await _start(discord, fake_openai, redis, _shard(key_prefix, tmp_path, 0))
    second = await _start(discord, fake_openai, redis, _shard(key_prefix, tmp_path, 1))
    try:
        assert discord.shards() == [(0, 2), (1, 2)]
        assert adapter_of(first).ready() and adapter_of(second).ready()
        seen_first, seen_second = record(first), record(second)
        await discord.user_says(f"<@{BOT_ID}> guild of shard zero", mention_bot=True)
        await discord.user_says(f"<@{BOT_ID}> guild of shard one", mention_bot=True,
                                channel_id=other)  # fmt: skip
        await discord.user_says("a DM", channel_id=DM_CHANNEL, guild=False)
        await wait_for(lambda: discord.texts_in(CHANNEL) == ["echo: guild of shard zero"])
        await wait_for(lambda: discord.texts_in(other) == ["echo: guild of shard one"])
        await wait_for(lambda: discord.texts_in(DM_CHANNEL) == ["echo: a DM"])
        await asyncio.sleep(0.3)  # room for a second answer, were there one
        assert seen_first == ["guild of shard zero", "a DM"]
        assert seen_second == ["guild of shard one"]
        assert len(discord.calls_to("POST", "/messages")) == 3
        assert len(fake_openai.chat_requests()) == 3
    finally:
        await second.stop()
        await first.stop()


async def test_two_ingress_processes_split_the_shards_and_one_worker_answers_once(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    """`--role ingress` with a shard each: a guild's events reach the ingress of its shard
    alone, which appends them; a worker (no gateway at all) answers each once."""
    other = discord.add_guild(guild_on_shard(1, 2))
    secrets = Secrets(discord_bot_token=TOKEN, discord_api_url=discord.api_url,
                      discord_gateway_url=discord.gateway_url,
                      openai_base_url=fake_openai.base_url)  # fmt: skip
    apps = [
        BotApp(_shard(key_prefix, tmp_path, 0), secrets, redis=redis, role="ingress"),
        BotApp(_shard(key_prefix, tmp_path, 1), secrets, redis=redis, role="ingress"),
        BotApp(_shard(key_prefix, tmp_path, 0), secrets, redis=redis, role="worker"),
    ]
    try:
        for app in apps:
            await app.start()
        first, second, worker = apps
        assert discord.shards() == [(0, 2), (1, 2)]  # the worker opened no gateway
        for n in range(3):
            await discord.user_says(f"<@{BOT_ID}> zero {n}", mention_bot=True)
            await discord.user_says(f"<@{BOT_ID}> one {n}", mention_bot=True, channel_id=other)
        await wait_for(lambda: len(discord.texts_in(CHANNEL)) == 3
                       and len(discord.texts_in(other)) == 3, timeout=15)  # fmt: skip
        assert discord.texts_in(CHANNEL) == [f"echo: zero {n}" for n in range(3)]
        assert discord.texts_in(other) == [f"echo: one {n}" for n in range(3)]
        assert first.ingress is not None and second.ingress is not None
        assert (first.ingress.appended, second.ingress.appended) == (3, 3)
        assert worker.worker is not None
        await wait_for(lambda: worker.worker is not None and worker.worker.turns == 6)
        assert len(fake_openai.chat_requests()) == 6
    finally:
        for app in reversed(apps):
            await app.stop()


async def test_readiness_waits_for_every_shard_of_the_process(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = _settings(key_prefix, tmp_path, shard_count=2, shard_ids=[1])
    app = await _start(discord, fake_openai, redis, settings)
    try:
        adapter = adapter_of(app)
        assert adapter.ready()
        assert isinstance(adapter.client, discord_py.AutoShardedClient)
        await adapter.client.shards[1].disconnect()  # the shard's connection is gone
        assert not adapter.ready()
    finally:
        await app.stop()


async def test_a_broken_frame_on_a_shard_restarts_the_sharded_client(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    """discord.py closes the whole `AutoShardedClient` on a frame it cannot read; the
    supervisor's next run builds a new client, and the shard answers again."""
    app = await _start(discord, fake_openai, redis, _shard(key_prefix, tmp_path, 0))
    try:
        adapter = adapter_of(app)
        before = adapter.client
        await discord.send_raw("{not json")
        await wait_for(lambda: adapter.client is not before and adapter.ready(), timeout=15)
        await discord.user_says(f"<@{BOT_ID}> still there?", mention_bot=True)
        await wait_for(lambda: discord.texts_in(CHANNEL) == ["echo: still there?"])
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({COUNT_ENV: "2", SHARD_ENV: "[2]"}, "shard id 2 is out of range"),
        ({SHARD_ENV: "[0]"}, "needs shard_count"),
        ({COUNT_ENV: "2", SHARD_ENV: "[]"}, "at least one shard"),
        ({COUNT_ENV: "0"}, "greater than or equal to 1"),
    ],
)
def test_bad_shard_settings_name_the_key(
    env: dict[str, str], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(None)
    key = "shard_ids" if SHARD_ENV in env else "shard_count"
    assert f"platforms.discord.{key}: " in str(raised.value)
    assert error in str(raised.value)


async def test_chatbot_run_refuses_a_shard_id_outside_the_count(tmp_path: Path) -> None:
    env = bot_process_env(**{COUNT_ENV: "2", SHARD_ENV: "[2]"}, DISCORD_BOT_TOKEN="x")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "run", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "platforms.discord.shard_ids: " in err.decode()
    assert "shard id 2 is out of range: with shard_count 2 the ids are 0..1" in err.decode()
