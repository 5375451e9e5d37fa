"""Discord, end to end: the real discord.py client against the fake REST API and gateway,
a real Redis and the fake OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.base import AdapterStartError
from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.discord import (
    BOT_ID,
    CHANNEL,
    DM_CHANNEL,
    GUILD,
    TOKEN,
    FakeDiscord,
)
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import wait_for


def pings_nobody(body: dict[str, Any]) -> bool:
    """Discord's allowed_mentions with nothing allowed (AllowedMentions.none())."""
    allowed = body.get("allowed_mentions") or {}
    return (
        allowed.get("parse") == []
        and not allowed.get("users")
        and not allowed.get("roles")
        and not allowed.get("replied_user", False)
    )


def _settings(key_prefix: str, tmp_path: Path, **discord: Any):
    return make_settings(key_prefix, tmp_path,
                         platforms={"discord": {"guild_ids": [int(GUILD)], **discord}})  # fmt: skip


async def _start(discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, settings,
                 token: str = TOKEN) -> BotApp:  # fmt: skip
    secrets = Secrets(discord_bot_token=token, discord_api_url=discord.api_url,
                      discord_gateway_url=discord.gateway_url,
                      openai_base_url=fake_openai.base_url)  # fmt: skip
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    return app


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture
async def bot(discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str,
              tmp_path: Path) -> AsyncIterator[FakeDiscord]:  # fmt: skip
    app = await _start(discord, fake_openai, redis, _settings(key_prefix, tmp_path))
    try:
        yield discord
    finally:
        await app.stop()


async def test_commands_are_synced_to_the_guild(bot: FakeDiscord):
    synced = bot.calls_to("PUT", f"/guilds/{GUILD}/commands")
    assert synced
    names = {c["name"] for c in synced[-1].body}
    assert names == {"ask", "reset", "persona", "model", "help", "image", "voice"}
    persona = next(c for c in synced[-1].body if c["name"] == "persona")
    assert {c["value"] for c in persona["options"][0]["choices"]} == {"default", "pirate"}


async def test_mention_gets_a_reply(bot: FakeDiscord, fake_openai: FakeOpenAI):
    asked = await bot.user_says(f"<@{BOT_ID}> hello bot", mention_bot=True)
    await wait_for(lambda: bot.texts_in(CHANNEL) == ["echo: hello bot"])
    first = bot.calls_to("POST", f"/channels/{CHANNEL}/messages")[0]
    assert str(first.body["message_reference"]["message_id"]) == asked["id"]
    assert pings_nobody(first.body)


async def test_chatter_without_mention_is_ignored(bot: FakeDiscord, fake_openai: FakeOpenAI):
    await bot.user_says("just people talking")
    await bot.user_says(f"<@{BOT_ID}> now you", mention_bot=True)
    await wait_for(lambda: bot.texts_in(CHANNEL) == ["echo: now you"])
    assert len(fake_openai.chat_requests()) == 1


async def test_dm_gets_a_reply(bot: FakeDiscord):
    await bot.user_says("hi in a DM", channel_id=DM_CHANNEL, guild=False)
    await wait_for(lambda: bot.texts_in(DM_CHANNEL) == ["echo: hi in a DM"])


async def test_slash_ask_is_deferred_then_the_original_edited(
    bot: FakeDiscord, fake_openai: FakeOpenAI
):
    fake_openai.push(Reply(text="streamed slowly to the original", tokens_per_second=40))
    await bot.slash("ask", {"question": "what is up?"})
    await wait_for(lambda: bot.texts_in(CHANNEL) == ["streamed slowly to the original"])
    callback = bot.calls_to("POST", "/callback")[0]
    assert callback.body["type"] == 5  # deferred "thinking…"
    edits = bot.calls_to("PATCH", "/messages/@original")
    assert len(edits) >= 2
    assert all(pings_nobody(e.body) for e in edits)
    assert fake_openai.chat_requests()[-1].messages[-1]["content"] == "what is up?"


async def test_long_slash_answer_continues_in_follow_ups(bot: FakeDiscord, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="\n\n".join(["word " * 150] * 6), words_per_chunk=60))
    await bot.slash("ask", {"question": "essay"})
    await wait_for(lambda: sum(map(len, bot.texts_in(CHANNEL))) > 4400, timeout=10)
    parts = bot.texts_in(CHANNEL)
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert bot.calls_to("POST", "/webhooks/")  # follow-ups


async def test_slash_reset_and_persona(bot: FakeDiscord, fake_openai: FakeOpenAI):
    await bot.slash("persona", {"name": "pirate"})
    await wait_for(lambda: any("pirate" in t for t in bot.texts_in(CHANNEL)))
    await bot.slash("reset")
    await wait_for(lambda: any("forgotten" in t for t in bot.texts_in(CHANNEL)))
    assert fake_openai.chat_requests() == []


async def test_everyone_in_model_output_pings_nobody(bot: FakeDiscord, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="@everyone @here <@&123> <@456> look"))
    await bot.user_says(f"<@{BOT_ID}> ping them", mention_bot=True)
    await wait_for(lambda: bot.texts_in(CHANNEL) == ["@everyone @here <@&123> <@456> look"])
    sent = bot.calls_to("POST", "/messages") + bot.calls_to("PATCH", "/messages")
    assert sent and all(pings_nobody(c.body) for c in sent)


async def test_failed_edits_do_not_lose_the_answer(bot: FakeDiscord, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="first words then the complete answer", tokens_per_second=30))
    # the message vanished under the bot (deleted by a moderator): every edit gets 404
    for _ in range(30):
        bot.fail(f"PATCH /channels/{CHANNEL}/messages", 404)
    await bot.user_says(f"<@{BOT_ID}> survive", mention_bot=True)
    await wait_for(lambda: "first words then the complete answer" in bot.texts_in(CHANNEL))
    assert bot.calls_to("PATCH", f"/channels/{CHANNEL}/messages")  # it did try to edit


async def test_thread_per_conversation_answers_without_mention(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    app = await _start(discord, fake_openai, redis, _settings(key_prefix, tmp_path,
                                                              open_threads=True))  # fmt: skip
    try:
        await discord.user_says(f"<@{BOT_ID}> start a topic", mention_bot=True)
        await wait_for(lambda: len(discord.threads) == 1)
        thread_id = next(iter(discord.threads))
        await wait_for(lambda: discord.texts_in(thread_id) == ["echo: start a topic"])
        await discord.dispatch(
            "THREAD_CREATE", {**discord.threads[thread_id], "newly_created": True}
        )
        await discord.user_says("follow-up without mention", channel_id=thread_id)
        await wait_for(lambda: len(discord.texts_in(thread_id)) == 2)
        sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages]
        assert sent[1:] == ["start a topic", "echo: start a topic", "follow-up without mention"]
    finally:
        await app.stop()


async def test_bad_token_is_a_clear_error(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    with pytest.raises(AdapterStartError) as info:
        await _start(discord, fake_openai, redis, _settings(key_prefix, tmp_path), token="wrong")
    assert "DISCORD_BOT_TOKEN" in str(info.value) and "wrong" not in str(info.value)


async def test_answer_outliving_the_interaction_token_continues_in_the_channel(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    settings = _settings(key_prefix, tmp_path, interaction_expiry=0.3)
    app = await _start(discord, fake_openai, redis, settings)
    try:
        words = ("word " * 60 + "\n\n") * 10  # ~3,000 characters, two or more parts
        fake_openai.push(Reply(text=words, words_per_chunk=20, tokens_per_second=20))
        await discord.slash("ask", {"question": "long one"})
        await wait_for(lambda: sum(map(len, discord.texts_in(CHANNEL))) >= 2900, timeout=15)
        assert discord.calls_to("PATCH", "/messages/@original")  # the start went to the original
        assert discord.calls_to("POST", f"/channels/{CHANNEL}/messages")  # the rest: channel
    finally:
        await app.stop()
