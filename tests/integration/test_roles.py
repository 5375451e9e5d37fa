"""`--role ingress` and `--role worker` in this process: one ingress on the three platforms'
fakes, two workers answering over the platforms' HTTP APIs.

Each conversation's messages are answered once and in order, by whichever worker holds the
conversation's partition; a redelivered event is appended once; the workers share the
partitions; `/healthz` and `/metrics` show the streams. The kill tests, with real processes,
are in tests/reliability/test_scaleout.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Settings
from core.model import ContextKey, Message, User
from stores.redis.keys import KeyBuilder
from stores.redis.streams import RedisStreams, next_id
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, driving, running_fakes
from tests.fakes import discord as fd
from tests.fakes import slack as fs
from tests.fakes import telegram as ft
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import wait_for

PLATFORMS = ("slack", "telegram", "discord")
CONVERSATIONS = 6  # per platform
SAYS = 3  # messages per conversation


def _settings(key_prefix: str, tmp_path: Path) -> Settings:
    return make_settings(
        key_prefix, tmp_path, platforms=drive_settings_overrides(),
        workers={"partitions": 4, "claim_idle": 1.5},
    )  # fmt: skip


@asynccontextmanager
async def topology(
    settings: Settings, redis: Redis, openai: FakeOpenAI, workers: int
) -> AsyncIterator[tuple[Bot, BotApp, list[BotApp]]]:
    async with running_fakes(openai) as fakes, AsyncExitStack() as stack:
        ingress = BotApp(settings, fakes.secrets, redis=redis, role="ingress")
        await ingress.start()
        stack.push_async_callback(ingress.stop)
        started = []
        for _ in range(workers):
            worker = BotApp(settings, fakes.secrets, redis=redis, role="worker")
            await worker.start()
            stack.push_async_callback(worker.stop)
            started.append(worker)
        bot = Bot(ingress, settings, openai, fakes.slack, fakes.telegram, fakes.discord)
        async with driving(bot):
            yield bot, ingress, started


def _expected(platform: str, conversation: int) -> list[str]:
    return [f"echo: {platform} {conversation} says {n}" for n in range(SAYS)]


async def test_an_ingress_and_two_workers_answer_each_message_once_and_in_order(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = _settings(key_prefix, tmp_path)
    async with topology(settings, redis, fake_openai, workers=2) as (bot, ingress, workers):
        for n in range(SAYS):
            for platform in PLATFORMS:
                for conversation in range(CONVERSATIONS):
                    said = f"{platform} {conversation} says {n}"
                    await bot.drivers[platform].say(conversation, said)

        def all_answered() -> bool:
            return all(
                len(bot.drivers[p].answers(c)) >= SAYS
                for p in PLATFORMS
                for c in range(CONVERSATIONS)
            )

        await wait_for(all_answered, timeout=30)
        for platform in PLATFORMS:
            for conversation in range(CONVERSATIONS):
                assert bot.drivers[platform].answers(conversation) == _expected(
                    platform, conversation
                )
        assert ingress.core is not None
        assert ingress.core.inflight.running == 0

        def turns() -> list[int]:
            return [w.worker.turns for w in workers if w.worker is not None]

        total = len(PLATFORMS) * CONVERSATIONS * SAYS
        await wait_for(lambda: sum(turns()) >= total, timeout=10)  # each acknowledged after
        assert sum(turns()) == total  # its answer shows, and counted then
        assert len(fake_openai.chat_requests()) == total

        # the partitions are shared out: the two workers hold all four between them
        async def shared() -> bool:
            owned = [set(w.worker.owned) for w in workers if w.worker is not None]
            return owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == 4 and all(owned)

        await wait_for(shared, timeout=10)

        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{workers[0].port}/healthz"
            async with session.get(url) as response:
                health = await response.json()
            async with session.get(f"http://127.0.0.1:{workers[0].port}/metrics") as response:
                metrics = await response.text()
        assert health["role"] == "worker"
        assert health["streams"]["waiting"] == 0 and health["streams"]["pending"] == 0
        assert health["worker"]["turns"] == turns()[0]
        assert "chatbot_stream_waiting{partition=" in metrics
        assert f'chatbot_worker_turns_total{{worker="{workers[0].worker.id}"}}' in metrics  # type: ignore[union-attr]


async def test_a_redelivered_event_is_appended_once(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = _settings(key_prefix, tmp_path)
    async with topology(settings, redis, fake_openai, workers=1) as (bot, ingress, _):
        event = fs.message("only once", channel="D000042", user="U000042")
        body = json.dumps(fs.event_body(event))
        for _ in range(3):  # Slack retries an event it got no quick 200 for
            assert await bot.post("/slack/events", body, fs.sign(body)) == 200
        await wait_for(lambda: bot.slack.texts_in("D000042") == ["echo: only once"], timeout=10)
        counts = ingress.ingress
        assert counts is not None  # bolt acknowledges first: the appends may still run
        await wait_for(lambda: counts.appended + counts.duplicates == 3, timeout=5)
        assert (counts.appended, counts.duplicates, counts.failed) == (1, 2, 0)
        keys = KeyBuilder(key_prefix)
        lengths = [await redis.xlen(keys.stream(p)) for p in range(4)]
        assert sum(lengths) <= 1  # acknowledged entries are trimmed behind the oldest held


async def test_a_slash_command_is_deferred_by_the_ingress_and_answered_by_a_worker(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    """The ingress acknowledges the interaction in time ("thinking…"); the worker, which never
    saw it, fills that response through the interaction's webhook with its token."""
    settings = _settings(key_prefix, tmp_path)
    async with topology(settings, redis, fake_openai, workers=1) as (bot, _, workers):
        discord = bot.discord
        await discord.slash("ask", {"question": "from a slash"})
        await wait_for(lambda: "echo: from a slash" in discord.texts_in(fd.CHANNEL), timeout=10)
        assert discord.calls_to("POST", "/callback")  # deferred by the ingress
        assert discord.calls_to("PATCH", "/messages/@original")  # filled by the worker
        assert not discord.calls_to("POST", f"/channels/{fd.CHANNEL}/messages")
        worker = workers[0].worker
        assert worker is not None
        await wait_for(lambda: worker.turns == 1)  # counted once the turn is recorded


async def test_telegram_polling_at_the_ingress_confirms_updates_only_once_appended(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    """Polling at the ingress hands each update on (appends it) before the offset moves
    past it: a getUpdates after the appends confirms them; nothing is fetched twice."""
    settings = _settings(key_prefix, tmp_path)
    async with running_fakes(fake_openai) as fakes, AsyncExitStack() as stack:
        secrets = fakes.secrets.model_copy(update={"telegram_webhook_url": None,
                                                   "slack_bot_token": None,
                                                   "discord_bot_token": None})  # fmt: skip
        for role in ("ingress", "worker"):
            app = BotApp(settings, secrets, redis=redis, role=role)
            await app.start()
            stack.push_async_callback(app.stop)
            if role == "ingress":
                ingress = app
        telegram = fakes.telegram
        for n in range(3):
            telegram.update(ft.text_message(f"polled {n}", chat_id=777, from_id=777))
        await wait_for(lambda: len(telegram.sent_texts(777)) == 3, timeout=15)
        assert telegram.sent_texts(777) == [f"echo: polled {n}" for n in range(3)]
        assert ingress.ingress is not None and ingress.ingress.appended == 3
        assert ingress.ingress.duplicates == 0  # no update was fetched again


async def test_acknowledged_entries_are_trimmed_behind_the_oldest_held(
    redis: Redis, key_prefix: str
):
    """The stream keeps what waits and what is held, plus at most one node of entries that
    approximate trimming (`XTRIM MINID ~`) leaves: it does not grow with the traffic."""
    streams = RedisStreams(redis, KeyBuilder(key_prefix), partitions=1, dedupe_ttl=60)
    await streams.join(0)
    message = Message("telegram", ContextKey("telegram", "1"), User("u"), "hi", "1")
    for _ in range(1000):
        await streams.append(0, message, f"token-{_}")
    entries = await streams.read(0, "w1", 1000, 0.1)
    assert len(entries) == 1000
    for entry in entries[:-1]:
        await streams.ack(0, [entry.id], next_id(entry.id))
    length = await redis.xlen(KeyBuilder(key_prefix).stream(0))
    assert 1 <= length <= 101, length  # the one still held, and what the last node keeps
    lag = await streams.lag(0)
    assert (lag.pending, lag.waiting) == (1, 0)


async def test_a_worker_that_lost_its_partition_while_answering_is_not_answered_over(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    """A stall can outlast a lease (a starved loop renews late). The next owner takes the
    partition's unacknowledged entries over, finds them claimed by a worker that lives, and
    waits for it instead of answering them again: each is answered once, in order."""
    settings = make_settings(
        key_prefix, tmp_path, platforms=drive_settings_overrides(),
        workers={"partitions": 1, "claim_idle": 1.5},
    )  # fmt: skip
    fake_openai.push(*[Reply(ttft=1.5, tokens_per_second=20) for _ in range(4)])
    async with running_fakes(fake_openai) as fakes, AsyncExitStack() as stack:
        apps = {}
        for role in ("ingress", "first"):
            app = BotApp(settings, fakes.secrets, redis=redis,
                         role="worker" if role == "first" else role)  # fmt: skip
            await app.start()
            stack.push_async_callback(app.stop)
            apps[role] = app
        bot = Bot(apps["ingress"], settings, fake_openai, fakes.slack, fakes.telegram,
                  fakes.discord)  # fmt: skip
        first = apps["first"].worker
        assert first is not None
        async with driving(bot):
            telegram = bot.drivers["telegram"]
            for conversation in (1, 2):
                for n in (0, 1):
                    await telegram.say(conversation, f"slow {conversation}.{n}")
            await wait_for(lambda: first.holding == 4, timeout=10)
            # its renewals stall (its turns go on) and its lease runs out; a second worker
            leases = first._leases
            assert leases is not None
            leases.cancel()
            await redis.delete(KeyBuilder(key_prefix).stream_lease(0))
            second_app = BotApp(settings, fakes.secrets, redis=redis, role="worker")
            await second_app.start()
            stack.push_async_callback(second_app.stop)
            second = second_app.worker
            assert second is not None and list(second.owned) == [0]
            await wait_for(lambda: not first.lease_valid(), timeout=5)  # its readers pause

            def expected(conversation: int) -> list[str]:
                return [f"echo: slow {conversation}.{n}" for n in (0, 1)]

            def answered() -> bool:
                return all(telegram.answers(c) == expected(c) for c in (1, 2))

            await wait_for(answered, timeout=20)
            await wait_for(lambda: first.turns == 4, timeout=10)
            assert second.turns == 0 and second.retaken >= 1  # taken over, none answered again
            assert len(fake_openai.chat_requests()) == 4
