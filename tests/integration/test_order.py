"""One conversation, in arrival order: several chats each send three messages at once, through
the real adapters, the real delivery dedupe on Redis and the fake model. Every chat's answers
come out in order, and each model request carries the chat's earlier turns.

Before the fix each adapter awaited the Redis dedupe before the message took its place in
its conversation's line; those replies come back in any order, and 7-15 of 30 chats were
answered out of order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bots.app import BotApp
from bots.assembly import build_core
from core.config import Secrets
from core.model import Message
from stores.redis.keys import KeyBuilder
from tests.conftest import make_settings
from tests.fakes.discord import DM_CHANNEL, FakeDiscord
from tests.fakes.discord import TOKEN as DISCORD_TOKEN
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, event_body, message, sign
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import RecordingResponder, user_message, wait_for

CHATS = 30
SAYS = ("first", "second", "third")


def _said(chat: int, n: int) -> str:
    return f"chat {chat} {SAYS[n]}"


def _echoes(chats: Iterable[list[str]]) -> int:
    """Complete answers shown (not a placeholder or a partial text)."""
    return sum(text.startswith("echo: ") and text.endswith(SAYS) for t in chats for text in t)


def assert_in_order(answers: dict[int, list[str]], requests: list[Recorded]) -> None:
    """Each chat's answers in order; each request carries the chat's earlier turns."""
    wrong = [c for c, got in answers.items() if got != [f"echo: {_said(c, n)}" for n in range(3)]]
    assert not wrong, f"{len(wrong)}/{CHATS} chats out of order, e.g. {answers[wrong[0]]}"
    by_last = {r.messages[-1]["content"]: r for r in requests}
    for chat in range(CHATS):
        for n in range(1, 3):
            contents = [m["content"] for m in by_last[_said(chat, n)].messages]
            earlier = [x for k in range(n) for x in (_said(chat, k), f"echo: {_said(chat, k)}")]
            assert contents[1:-1] == earlier, f"chat {chat}, message {n}: {contents}"


async def test_telegram_polling_answers_each_chat_in_order(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeTelegram() as tg:
        telegram = {"poll_timeout": 1, "max_rate": 100_000, "group_max_rate": 100_000}
        settings = make_settings(key_prefix, tmp_path, platforms={"telegram": telegram})
        secrets = Secrets(telegram_bot_token=tg.token, telegram_api_url=tg.api_url,
                          openai_base_url=fake_openai.base_url)  # fmt: skip
        app = BotApp(settings, secrets, redis=redis)
        await app.start()
        try:
            for n in range(3):  # one getUpdates brings them all
                for chat in range(CHATS):
                    tg.update(
                        text_message(_said(chat, n), chat_id=1000 + chat, from_id=1000 + chat)
                    )
            await wait_for(lambda: _echoes(tg.sent_texts(1000 + c) for c in range(CHATS)) == 90,
                           timeout=60)  # fmt: skip
            answers = {c: tg.sent_texts(1000 + c) for c in range(CHATS)}
        finally:
            await app.stop()
    assert_in_order(answers, fake_openai.chat_requests())


async def test_slack_answers_each_dm_in_order(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeSlack(streaming=False) as slack:
        apps = [await _slack_app(slack, fake_openai, redis, key_prefix, tmp_path)]
        await _slack_run(slack, apps, fake_openai)


async def test_slack_two_replicas_on_one_redis_answer_each_dm_in_order(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    """A load balancer sends each event to either replica; the turn lock and the dedupe in
    Redis keep each conversation's turns one at a time, in order."""
    fake_openai.default = Reply(tokens_per_second=40)  # each answer still runs at the next one
    async with FakeSlack(streaming=False) as slack:
        apps = [await _slack_app(slack, fake_openai, redis, key_prefix, tmp_path) for _ in "ab"]
        await _slack_run(slack, apps, fake_openai)


async def _slack_app(
    slack: FakeSlack, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> BotApp:
    secrets = Secrets(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack.api_url,
        openai_base_url=fake_openai.base_url,
    )
    app = BotApp(make_settings(key_prefix, tmp_path), secrets, redis=redis)
    await app.start()
    return app


async def _slack_run(slack: FakeSlack, apps: list[BotApp], fake_openai: FakeOpenAI) -> None:
    """Each chat's three messages go out back to back (each acked before the next), all
    chats at once; with two replicas they alternate between them, and each is delivered
    twice (Slack's retry) to the other replica too. Across replicas a message goes out once
    the one before it is claimed in Redis (people do not type faster than a round trip; a
    claim landing after a later message's turn began is not waited for, docs/operating.md),
    while the one before is still being answered."""
    async with aiohttp.ClientSession() as session:

        async def post(app: BotApp, body: dict[str, Any]) -> None:
            raw = json.dumps(body)
            headers = {**sign(raw), "Content-Type": "application/json"}
            url = f"http://127.0.0.1:{app.port}/slack/events"
            async with session.post(url, data=raw, headers=headers) as response:
                assert response.status == 200

        async def send(c: int, n: int) -> None:
            body = event_body(message(_said(c, n), channel=f"D{c:04d}"))
            await post(apps[(c + n) % len(apps)], body)
            if len(apps) > 1:
                await post(apps[(c + n + 1) % len(apps)], body)  # a redelivery

        async def chat(c: int) -> None:
            for n in range(3):
                await send(c, n)

        def claims() -> int:
            return sum(app.core.intake.claims for app in apps if app.core and app.core.intake)

        try:
            if len(apps) == 1:
                await asyncio.gather(*(chat(c) for c in range(CHATS)))
            for n in range(3) if len(apps) > 1 else ():
                await asyncio.gather(*(send(c, n) for c in range(CHATS)))
                await wait_for(lambda n=n: claims() == (n + 1) * CHATS * 2, timeout=20)
            await wait_for(lambda: _echoes(slack.texts_in(f"D{c:04d}") for c in range(CHATS))
                           == 90, timeout=60)  # fmt: skip
            answers = {c: slack.texts_in(f"D{c:04d}") for c in range(CHATS)}
        finally:
            for app in apps:
                await app.stop()
    assert_in_order(answers, fake_openai.chat_requests())
    assert len(fake_openai.chat_requests()) == 90  # each redelivery answered once


async def test_discord_answers_each_dm_in_order(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeDiscord() as discord:
        secrets = Secrets(discord_bot_token=DISCORD_TOKEN, discord_api_url=discord.api_url,
                          discord_gateway_url=discord.gateway_url,
                          openai_base_url=fake_openai.base_url)  # fmt: skip
        app = BotApp(make_settings(key_prefix, tmp_path), secrets, redis=redis)
        await app.start()
        channels = [str(int(DM_CHANNEL) + 1 + c) for c in range(CHATS)]
        try:
            for n in range(3):
                for c in range(CHATS):
                    await discord.user_says(_said(c, n), channel_id=channels[c], guild=False)
            await wait_for(lambda: _echoes(discord.texts_in(ch) for ch in channels) == 90,
                           timeout=60)  # fmt: skip
            answers = {c: discord.texts_in(channels[c]) for c in range(CHATS)}
        finally:
            await app.stop()
    assert_in_order(answers, fake_openai.chat_requests())


async def test_another_process_live_place_is_waited_for_and_a_dead_one_is_not(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    """A message whose predecessor was claimed by another process waits while that process
    lives (its heartbeat key exists), however long its answer takes, and goes on once the
    place is released; a predecessor whose process died (no heartbeat) is released at once."""
    settings = make_settings(key_prefix, tmp_path)
    secrets = Secrets(openai_api_key="sk-test", openai_base_url=fake_openai.base_url)
    keys = KeyBuilder(key_prefix)
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        assert core.intake is not None
        line = core.chat.conversation_key(user_message("x"))
        await redis.set(keys.owner("other"), "1", ex=60)  # the other replica lives
        alive = f"{1:020d}:d1:other"
        assert (await core.store.claim(line, "console", "d1", alive))[0]
        waiting = asyncio.create_task(core.handler(_ordered("after a live one", 2),
                                                   RecordingResponder()))  # fmt: skip
        await wait_for(lambda: core.intake.queued == 1)  # its turn came: it waits in Redis
        assert await core.store.pending(line, alive) == "pending"
        assert not fake_openai.chat_requests()
        await core.store.leave(line, alive)  # the other replica answered
        await asyncio.wait_for(waiting, 10)
        assert [r.messages[-1]["content"] for r in fake_openai.chat_requests()] == [
            "after a live one"
        ]

        dead = f"{3:020d}:d3:gone"  # claimed, and then its process died
        assert (await core.store.claim(line, "console", "d3", dead))[0]
        assert await core.store.pending(line, dead) == "orphaned"
        responder = RecordingResponder()
        await asyncio.wait_for(core.handler(_ordered("after a dead one", 4), responder), 5)
        assert responder.shown == "echo: after a dead one"
        assert await core.store.pending(line, dead) == "answered"  # released by the next one


def _ordered(text: str, n: int) -> Message:
    return replace(user_message(text), delivery_id=f"d{n}", order=f"{n:020d}")
