"""The whole bot on all three platforms at once, over their fake servers, for the fault
suite and the benchmark: one `BotApp` with the Slack, Telegram and Discord adapters, and a
driver per platform that speaks to it the way the platform would.

Each driver maps a conversation number to a private conversation on its platform (a Slack
DM, a Telegram private chat, a Discord DM) so conversations never share history.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import SecretStr
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets, Settings
from tests.fakes import discord as fd
from tests.fakes import slack as fs
from tests.fakes import telegram as ft
from tests.fakes.common import Screen
from tests.fakes.openai_server import FakeOpenAI

TELEGRAM_TOKEN = "123456:TEST-token"
TELEGRAM_SECRET = "drive-webhook-secret"


@dataclass
class Sent:
    """One user message the driver delivered."""

    platform: str
    conversation: int
    text: str
    at: float = field(default_factory=time.monotonic)


class Driver:
    """Says things on one platform and reads what the bot answered there."""

    name = ""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def say(self, conversation: int, text: str) -> None:
        raise NotImplementedError

    def answers(self, conversation: int) -> list[str]:
        raise NotImplementedError

    def calls(self) -> list[tuple[float, str, str]]:
        """(time, conversation channel, text) of every call that put text on screen."""
        raise NotImplementedError

    def where(self, conversation: int) -> str:
        """The channel id that `calls()` reports for a conversation."""
        raise NotImplementedError

    def screen(self) -> Screen:
        raise NotImplementedError

    async def wait_answers(
        self, conversation: int, done: Callable[[list[str]], bool], timeout: float
    ) -> list[str]:
        """Wait until `done(answers)`; return the answers. Waits on the fake's change events
        rather than polling, so thousands of waiting conversations cost nothing."""
        deadline = time.monotonic() + timeout
        while True:
            answers = self.answers(conversation)
            left = deadline - time.monotonic()
            if done(answers) or left <= 0:
                return answers
            await self.screen().wait(self.where(conversation), left)


class TelegramDriver(Driver):
    name = "telegram"

    def screen(self) -> Screen:
        return self.bot.telegram.screen

    def chat(self, conversation: int) -> int:
        return 10_000 + conversation

    def where(self, conversation: int) -> str:
        return str(self.chat(conversation))

    async def say(self, conversation: int, text: str) -> None:
        message = ft.text_message(text, chat_id=self.chat(conversation),
                                  from_id=self.chat(conversation))  # fmt: skip
        update = self.bot.telegram.update(message)
        self.bot.telegram.updates.remove(update)
        await self.bot.post("/telegram/webhook", json.dumps(update),
                            {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET})  # fmt: skip

    def answers(self, conversation: int) -> list[str]:
        return self.bot.telegram.sent_texts(self.chat(conversation))

    def calls(self) -> list[tuple[float, str, str]]:
        methods = ("sendMessage", "sendMessageDraft", "editMessageText")
        return [(c.at, str(c.params.get("chat_id")), str(c.params.get("text", "")))
                for c in self.bot.telegram.calls_of(*methods)]  # fmt: skip


class SlackDriver(Driver):
    name = "slack"

    def screen(self) -> Screen:
        return self.bot.slack.screen

    def channel(self, conversation: int) -> str:
        return f"D{conversation:06d}"

    def where(self, conversation: int) -> str:
        return self.channel(conversation)

    async def say(self, conversation: int, text: str) -> None:
        event = fs.message(text, channel=self.channel(conversation), user=f"U{conversation:06d}")
        body = json.dumps(fs.event_body(event))
        await self.bot.post("/slack/events", body, fs.sign(body))

    def answers(self, conversation: int) -> list[str]:
        return [t for t in self.bot.slack.texts_in(self.channel(conversation))
                if t != self.bot.settings.platforms.slack.thinking]  # fmt: skip

    def calls(self) -> list[tuple[float, str, str]]:
        thinking = self.bot.settings.platforms.slack.thinking
        return [(c.at, str(c.params.get("channel")), str(c.params.get("text", "")))
                for c in self.bot.slack.calls_of("chat.postMessage", "chat.update")
                if c.params.get("text") != thinking]  # fmt: skip


class DiscordDriver(Driver):
    name = "discord"

    def screen(self) -> Screen:
        return self.bot.discord.screen

    def channel(self, conversation: int) -> str:
        return str(950000000000000000 + conversation)

    def where(self, conversation: int) -> str:
        return self.channel(conversation)

    async def say(self, conversation: int, text: str) -> None:
        author = fd.human(str(960000000000000000 + conversation), f"user{conversation}")
        await self.bot.discord.user_says(text, channel_id=self.channel(conversation), guild=False,
                                         author=author)  # fmt: skip

    def answers(self, conversation: int) -> list[str]:
        return self.bot.discord.texts_in(self.channel(conversation))

    def calls(self) -> list[tuple[float, str, str]]:
        return [(c.at, c.path.split("/")[2], str(c.body.get("content", "")))
                for c in self.bot.discord.calls
                if c.path.startswith("/channels/") and "/messages" in c.path]  # fmt: skip


class Bot:
    """The running bot and its fakes. `app` is None when the bot runs in another process
    (the benchmark); `port` is then where that process listens."""

    def __init__(self, app: BotApp | None, settings: Settings, openai: FakeOpenAI,
                 slack: fs.FakeSlack, telegram: ft.FakeTelegram,
                 discord: fd.FakeDiscord, *, port: int = 0) -> None:  # fmt: skip
        self.app, self.settings, self.openai = app, settings, openai
        self.slack, self.telegram, self.discord = slack, telegram, discord
        self._port = port
        self.session: aiohttp.ClientSession | None = None
        self.drivers: dict[str, Driver] = {
            "slack": SlackDriver(self), "telegram": TelegramDriver(self),
            "discord": DiscordDriver(self),
        }  # fmt: skip

    @property
    def port(self) -> int:
        return self.app.port if self.app is not None else self._port

    async def post(self, path: str, body: str, headers: dict[str, str]) -> int:
        assert self.session is not None
        url = f"http://127.0.0.1:{self.port}{path}"
        headers = {**headers, "Content-Type": "application/json"}
        async with self.session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status


@dataclass
class Fakes:
    """The three fake platforms, and the secrets that point a bot at them."""

    slack: fs.FakeSlack
    telegram: ft.FakeTelegram
    discord: fd.FakeDiscord
    secrets: Secrets


@asynccontextmanager
async def running_fakes(openai: FakeOpenAI) -> AsyncIterator[Fakes]:
    async with AsyncExitStack() as stack:
        slack = await stack.enter_async_context(fs.FakeSlack(streaming=False))
        telegram = await stack.enter_async_context(ft.FakeTelegram(TELEGRAM_TOKEN))
        discord = await stack.enter_async_context(fd.FakeDiscord())
        secrets = Secrets(
            openai_base_url=openai.base_url,
            slack_bot_token=fs.BOT_TOKEN, slack_signing_secret=fs.SIGNING_SECRET,
            slack_api_url=slack.api_url,
            telegram_bot_token=TELEGRAM_TOKEN, telegram_api_url=telegram.api_url,
            telegram_webhook_url="https://bot.example/telegram/webhook",
            telegram_webhook_secret=TELEGRAM_SECRET,
            discord_bot_token=fd.TOKEN, discord_api_url=discord.api_url,
            discord_gateway_url=discord.gateway_url,
        )  # fmt: skip
        yield Fakes(slack, telegram, discord, secrets)


def secret_env(secrets: Secrets) -> dict[str, str]:
    """The environment variables that give a bot process these secrets."""
    env = {}
    for name in type(secrets).model_fields:
        value = getattr(secrets, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            env[name.upper()] = str(value)
    return env


@asynccontextmanager
async def driving(bot: Bot) -> AsyncIterator[Bot]:
    """Give `bot` the HTTP session its drivers post webhooks with."""
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        bot.session = session
        yield bot


@asynccontextmanager
async def running_bot(settings: Settings, redis: Redis, openai: FakeOpenAI) -> AsyncIterator[Bot]:
    """All three platforms on one bot in this process, over their fakes."""
    async with running_fakes(openai) as fakes, AsyncExitStack() as stack:
        app = BotApp(settings, fakes.secrets, redis=redis)
        await app.start()
        stack.push_async_callback(app.stop)
        bot = Bot(app, settings, openai, fakes.slack, fakes.telegram, fakes.discord)
        async with driving(bot):
            yield bot


def drive_settings_overrides() -> dict[str, Any]:
    """Platform options that suit many fast conversations (tests and the benchmark)."""
    return {
        "telegram": {
            "drafts": False,
            "group_max_rate": 100_000,
            "group_edit_interval": 0.05,
            "max_rate": 100_000,
        },
        "slack": {"native_streaming": False},
        "discord": {},
    }


async def gather_limited(coroutines: list[Any], limit: int) -> list[Any]:
    """Run coroutines with at most `limit` at once."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))
