"""Privacy of the logs (issue: privacy): with `input.log_user_text` off (the default), no log
line at INFO or above, from our code or from an SDK's logger, holds what a user wrote or what
the model answered.

Each platform runs a whole conversation through its real adapter against the local fake
servers: /help, a question whose answer streams over several edits, a model that fails (the
apology), /reset and one more question. The user's messages carry USER and the model's answer
MODEL; every record of every logger is captured at INFO, with the levels `chatbot` itself
sets (`bots/logs.py`), and searched for both words: the message, its args, its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import queue
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest
from redis.asyncio import Redis

# The adapters import their SDKs, whose loggers must exist before they are set up below.
import adapters.discord
import adapters.slack
import adapters.telegram
import adapters.web  # noqa: F401
from adapters.console import ConsoleChat
from bots.app import BotApp
from bots.assembly import build_core
from bots.logs import setup_logging
from core.config import Secrets, Settings
from tests.conftest import make_settings
from tests.fakes import discord as fd
from tests.fakes import slack as fs
from tests.fakes import telegram as ft
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import wait_for

USER = "zebracanary42"  # in every message the user writes
MODEL = "moosecanary77"  # in the model's streamed answer
ANSWER = " ".join(["so", "the", MODEL, "said", *(f"w{i}" for i in range(14)), "finale"])

TELEGRAM_TOKEN = "123456:TEST-token"
TELEGRAM_SECRET = "webhook-secret-value"
TELEGRAM_GROUP = -1001234
WEB_SECRET = "test-web-jwt-secret-0123456789-abcdefghijklmnop"

PLATFORMS = [
    "slack-native",  # HTTP events; chat.startStream/appendStream in the thread
    "slack-edits",  # HTTP events; chat.postMessage then chat.update
    "telegram-polling",
    "telegram-webhook",
    "discord",
    "web-sse",
    "web-websocket",
    "console",
]


# ---- the logs --------------------------------------------------------------------------


@contextlib.contextmanager
def logging_as_in_production(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Every logger at INFO and propagating to the root, except what `setup_logging` quiets;
    the root's handler is `chatbot`'s own (yielded: its formatted output) plus caplog's."""
    root = logging.getLogger()
    loggers = {name: logger for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}  # fmt: skip
    saved = {name: (lg.level, lg.propagate, lg.disabled) for name, lg in loggers.items()}
    handlers = root.handlers[:]
    caplog.set_level(logging.INFO)  # the root's level, restored after the test
    for logger in loggers.values():
        logger.setLevel(logging.NOTSET)
        logger.propagate, logger.disabled = True, False
    output = io.StringIO()
    try:
        setup_logging("INFO", [], stream=output)  # replaces the root's handlers
        root.addHandler(caplog.handler)
        yield output
    finally:
        root.handlers[:] = handlers
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                level, propagate, disabled = saved.get(name, (logging.NOTSET, True, False))
                logger.setLevel(level)
                logger.propagate, logger.disabled = propagate, disabled


def texts_of(record: logging.LogRecord) -> list[str]:
    """Everything of a record a log line or a log pipeline can show."""
    texts = [record.getMessage(), repr(record.msg), repr(record.args)]
    if record.exc_info:
        texts.append(logging.Formatter().formatException(record.exc_info))
    texts += [t for t in (record.exc_text, record.stack_info) if t]
    return texts


def lines_with(word: str, records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in records
            if r.levelno >= logging.INFO and any(word in t for t in texts_of(r))]  # fmt: skip


# ---- one conversation, whatever the platform -------------------------------------------


class Chat:
    """The user's side of one conversation on one platform."""

    async def say(self, text: str) -> None:
        """A message addressed to the bot."""
        raise NotImplementedError

    async def command(self, name: str, args: str = "") -> None:
        await self.say(f"/{name} {args}".strip())

    def shown(self) -> list[str]:
        """The current text of every bot message of the conversation, in order."""
        raise NotImplementedError

    def streamed(self) -> int:
        """How many edits (or deltas) have carried partial answers so far."""
        raise NotImplementedError


async def converse(chat: Chat, fake_openai: FakeOpenAI) -> None:
    seen = 0

    async def answered(expected: str) -> None:
        nonlocal seen

        def found() -> int | None:
            shown = chat.shown()
            return next((i for i in range(seen, len(shown)) if expected in shown[i]), None)

        await wait_for(lambda: found() is not None, timeout=10)
        seen = found() + 1  # type: ignore[operator]

    await chat.command("help", f"about {USER}")
    await answered("forget this conversation")

    fake_openai.push(Reply(text=ANSWER, tokens_per_second=40))
    before = chat.streamed()
    await chat.say(f"tell me about the {USER} please")
    await answered("finale")
    assert chat.streamed() - before >= 3, "the answer did not stream over several edits"

    fake_openai.push(*[Reply("error", status=500, retry_after=0.01)] * 3)  # and 2 retries
    await chat.say(f"and the {USER} again?")
    await answered("language model")  # the apology

    await chat.command("reset")
    await answered("forgotten")

    await chat.command("ask", f"last {USER} question")
    await answered(f"echo: last {USER} question")


class SlackChat(Chat):
    """Mentions in a channel (answered in threads); commands through the `/ask` slash
    command, answered in the channel."""

    channel = "C0GENERAL"

    def __init__(self, app: BotApp, slack: fs.FakeSlack) -> None:
        self.app, self.slack = app, slack

    async def _post(self, body: str, headers: dict[str, str]) -> None:
        url = f"http://127.0.0.1:{self.app.port}/slack/events"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()

    async def say(self, text: str) -> None:
        body = json.dumps(fs.event_body(fs.mention(text, channel=self.channel)))
        await self._post(body, {**fs.sign(body), "Content-Type": "application/json"})

    async def command(self, name: str, args: str = "") -> None:
        text = args if name == "ask" else f"{name} {args}".strip()
        form = {"command": "/ask", "text": text, "user_id": "U0ANN", "user_name": "ann",
                "channel_id": self.channel, "team_id": fs.TEAM, "trigger_id": "tr1",
                "response_url": f"http://127.0.0.1:{self.slack.port}/api/respond",
                "token": "unused"}  # fmt: skip
        body = urlencode(form)
        await self._post(
            body, {**fs.sign(body), "Content-Type": "application/x-www-form-urlencoded"}
        )

    def shown(self) -> list[str]:
        return self.slack.texts_in(self.channel)

    def streamed(self) -> int:
        return len(self.slack.calls_of("chat.appendStream", "chat.update"))


class TelegramChat(Chat):
    """A group, over long polling or the webhook: mentions and commands, answers streamed by
    edits (a private chat's drafts would be skipped: it gets one call a second)."""

    def __init__(self, app: BotApp, tg: ft.FakeTelegram, webhook: bool) -> None:
        self.app, self.tg, self.webhook = app, tg, webhook

    async def say(self, text: str) -> None:
        if not text.startswith("/"):
            text = f"@{ft.BOT_USERNAME} {text}"
        entities = [] if text.startswith("/") else [ft.mention_entity(text, f"@{ft.BOT_USERNAME}")]
        message = ft.text_message(
            text, chat_id=TELEGRAM_GROUP, kind="supergroup", entities=entities
        )
        update = self.tg.update(message)
        if not self.webhook:
            return
        self.tg.updates.remove(update)
        url = f"http://127.0.0.1:{self.app.port}/telegram/webhook"
        headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=update, headers=headers) as response,
        ):
            assert response.status == 200

    def shown(self) -> list[str]:
        return self.tg.sent_texts(TELEGRAM_GROUP)

    def streamed(self) -> int:
        return len(self.tg.calls_of("sendMessageDraft", "editMessageText"))


class DiscordChat(Chat):
    """Mentions in a guild channel; commands as slash commands (which take no free text but
    the question of /ask)."""

    def __init__(self, discord: fd.FakeDiscord) -> None:
        self.discord = discord

    async def say(self, text: str) -> None:
        await self.discord.user_says(f"<@{fd.BOT_ID}> {text}", mention_bot=True)

    async def command(self, name: str, args: str = "") -> None:
        await self.discord.slash(name, {"question": args} if name == "ask" else None)

    def shown(self) -> list[str]:
        return self.discord.texts_in(fd.CHANNEL)

    def streamed(self) -> int:
        return len(self.discord.calls_to("PATCH"))


class WebChat(Chat):
    """The web channel's API with a signed token: SSE posts or one WebSocket."""

    def __init__(self, base: str, session: aiohttp.ClientSession, socket: bool) -> None:
        self.base, self.session, self.socket = base, session, socket
        self.token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, WEB_SECRET,
                                algorithm="HS256")  # fmt: skip
        self.answers: list[str] = []
        self.deltas = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = 0

    async def say(self, text: str) -> None:
        self._ids += 1
        if self.socket:
            if self.ws is None:
                self.ws = await self.session.ws_connect(f"{self.base}/api/ws?token={self.token}")
            await self.ws.send_json({"type": "message", "conversation": "c1",
                                     "id": f"m{self._ids}", "text": text})  # fmt: skip
            while True:
                frame = await self.ws.receive_json(timeout=10)
                if frame["type"] == "delta":
                    self.deltas += 1
                elif frame["type"] == "done":
                    self.answers.append(frame["text"])
                    return
                else:
                    raise AssertionError(frame)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        url = f"{self.base}/api/conversations/c1/messages"
        async with self.session.post(url, json={"text": text}, headers=headers) as response:
            assert response.status == 200, await response.text()
            event = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event == "delta":
                    self.deltas += 1
                elif line.startswith("data:") and event == "done":
                    self.answers.append(json.loads(line.removeprefix("data:"))["text"])

    def shown(self) -> list[str]:
        return self.answers

    def streamed(self) -> int:
        return self.deltas


class Terminal(io.StringIO):
    """The console's output, counting the writes (each streamed delta is one)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class Keyboard:
    """The console's input: lines typed one by one while the chat runs."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()

    def readline(self) -> str:
        try:
            return self.lines.get(timeout=30)
        except queue.Empty:
            return ""  # end of input: the chat ends


class ConsoleChatDriver(Chat):
    def __init__(self, keyboard: Keyboard, out: Terminal) -> None:
        self.keyboard, self.out = keyboard, out

    async def say(self, text: str) -> None:
        self.keyboard.lines.put(text + "\n")

    def shown(self) -> list[str]:
        return self.out.getvalue().split("bot> ")[1:]

    def streamed(self) -> int:
        return self.out.writes


@asynccontextmanager
async def chat_on(
    platform: str, settings: Settings, fake_openai: FakeOpenAI, redis: Redis
) -> AsyncIterator[Chat]:
    """`platform` running on its fake server, and a conversation with it."""
    async with AsyncExitStack() as stack:
        openai_url = fake_openai.base_url
        if platform == "console":
            secrets = Secrets(openai_base_url=openai_url)
            core = await build_core(stack, settings, secrets, redis=redis)
            keyboard, out = Keyboard(), Terminal()
            console = ConsoleChat(core.handler, user="console", stdin=keyboard, out=out,
                                  edit_interval=settings.edit_interval("console"))  # fmt: skip
            running = asyncio.create_task(console.run())
            try:
                yield ConsoleChatDriver(keyboard, out)
            finally:
                keyboard.lines.put("")  # end of input
                await asyncio.wait_for(running, 10)
            return
        if platform.startswith("slack"):
            slack = await stack.enter_async_context(
                fs.FakeSlack(streaming=platform == "slack-native")
            )
            secrets = Secrets(slack_bot_token=fs.BOT_TOKEN, slack_signing_secret=fs.SIGNING_SECRET,
                              slack_api_url=slack.api_url, openai_base_url=openai_url)  # fmt: skip
        elif platform.startswith("telegram"):
            tg = await stack.enter_async_context(ft.FakeTelegram(TELEGRAM_TOKEN))
            webhook = platform == "telegram-webhook"
            secrets = Secrets(
                telegram_bot_token=TELEGRAM_TOKEN,
                telegram_api_url=tg.api_url,
                telegram_webhook_url="https://bot.example/telegram/webhook" if webhook else None,
                telegram_webhook_secret=TELEGRAM_SECRET if webhook else None,
                openai_base_url=openai_url,
            )
        elif platform == "discord":
            discord = await stack.enter_async_context(fd.FakeDiscord())
            secrets = Secrets(discord_bot_token=fd.TOKEN, discord_api_url=discord.api_url,
                              discord_gateway_url=discord.gateway_url,
                              openai_base_url=openai_url)  # fmt: skip
        else:
            secrets = Secrets(web_jwt_secret=WEB_SECRET, openai_base_url=openai_url)
        app = BotApp(settings, secrets, redis=redis)
        await app.start()
        stack.push_async_callback(app.stop)
        if platform.startswith("slack"):
            yield SlackChat(app, slack)
        elif platform.startswith("telegram"):
            yield TelegramChat(app, tg, webhook)
        elif platform == "discord":
            yield DiscordChat(discord)
        else:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            web_chat = WebChat(f"http://127.0.0.1:{app.port}", session, platform == "web-websocket")
            yield web_chat
            if web_chat.ws is not None:
                await web_chat.ws.close()


def settings_for(platform: str, key_prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    platforms: dict[str, Any] = {
        "telegram": {"poll_timeout": 1, "group_edit_interval": 0.05, "group_max_rate": 10_000},
        "discord": {"guild_ids": [int(fd.GUILD)]},
    }
    return make_settings(key_prefix, tmp_path, platforms=platforms, **overrides)


# ---- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_no_user_or_model_text_in_any_log_line(
    platform: str,
    caplog: pytest.LogCaptureFixture,
    fake_openai: FakeOpenAI,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(platform, key_prefix, tmp_path)
    assert settings.input.log_user_text is False  # the default
    with logging_as_in_production(caplog) as output:
        async with chat_on(platform, settings, fake_openai, redis) as chat:
            await converse(chat, fake_openai)
    records = caplog.records
    assert any(r.name == "core.routing.middleware" for r in records), "nothing was captured"
    assert lines_with(USER, records) == []
    assert lines_with(MODEL, records) == []
    assert USER not in output.getvalue() and MODEL not in output.getvalue()


async def test_with_log_user_text_on_the_users_words_are_logged(
    caplog: pytest.LogCaptureFixture,
    fake_openai: FakeOpenAI,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """The opposite, so that the search above is known to find what it looks for."""
    settings = settings_for("slack-edits", key_prefix, tmp_path, input={"log_user_text": True})
    with logging_as_in_production(caplog) as output:
        async with chat_on("slack-edits", settings, fake_openai, redis) as chat:
            await converse(chat, fake_openai)
    assert lines_with(USER, caplog.records)
    assert USER in output.getvalue()
    assert lines_with(MODEL, caplog.records) == []  # the setting is about the user's words
