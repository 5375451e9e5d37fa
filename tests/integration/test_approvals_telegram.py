"""Approval buttons on Telegram, end to end: the real adapter (python-telegram-bot) and the real
core (`build_core`, the test Redis) against the fake Bot API and the fake OpenAI server.

The request is a message with an inline keyboard where the answer goes (the chat, the topic,
replying to the question in groups); a press is delivered as Telegram delivers it (a
`callback_query` update through getUpdates or POSTed to the webhook), and the tests read what
Telegram was sent: one answerCallbackQuery per press (an alert for the presser alone, or
empty), the request edited to its outcome without buttons, the answer going on in place.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from adapters.telegram import UNHANDLED, TelegramAdapter
from adapters.telegram_approvals import APPROVE, DENY, callback_data
from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from core.model import Decision, Message
from core.protocols import DecisionHandler, DecisionReply, Responder
from tests.conftest import make_settings
from tests.fakes.common import serve_locally
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import wait_for

TOKEN = "123456:TEST-token"
SECRET = "webhook-secret-value"
GROUP, TOPIC = -1001234, 11
ANN, BOB = 42, 99  # Ann asks; Bob is someone else in the group
SUM = Reply(text="Let me work that out.", tool_calls=[Call("calculator", {"expression": "6*7"})])
GONE = "This request was already decided, or has expired."


@dataclass
class Bot:
    adapter: TelegramAdapter
    core: Core
    tg: FakeTelegram
    port: int
    webhook: bool

    async def deliver(self, update: dict[str, Any]) -> None:
        """Telegram hands the update out through getUpdates, or POSTs it to the webhook."""
        if not self.webhook:
            return
        self.tg.updates.remove(update)
        url = f"http://127.0.0.1:{self.port}/telegram/webhook"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=update, headers=headers) as response,
        ):
            assert response.status == 200

    async def say(self, message: dict[str, Any]) -> None:
        await self.deliver(self.tg.update(message))

    async def press(self, chat_id: int, message_id: int, button: str = "", **how: Any) -> Any:
        """A tap on a button; returns how the bot answered the query, once it has."""
        update = self.tg.press(chat_id, message_id, button, **how)
        await self.deliver(update)
        await wait_for(lambda: self.tg.answered(update) is not None)
        return self.tg.answered(update)


def approving(key_prefix: str, tmp_path: Path, ttl: float = 600.0) -> Settings:
    telegram = {"poll_timeout": 1, "group_edit_interval": 0.05, "group_max_rate": 10_000}
    return make_settings(
        key_prefix, tmp_path, platforms={"telegram": telegram},
        tools={"enabled": ["calculator"], "approve": ["calc*"], "approval_ttl": ttl},
    )  # fmt: skip


WIRED: Any = object()  # `running`'s default: the core's `chat.decide`


@asynccontextmanager
async def running(
    tg: FakeTelegram,
    settings: Settings,
    secrets: Secrets,
    redis: Redis,
    *,
    webhook: bool = False,
    on_decision: DecisionHandler | None = WIRED,
) -> AsyncIterator[Bot]:
    """A bot process: its core on the test Redis, its Telegram adapter polling the fake or
    taking the webhook on a local server."""
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        adapter = TelegramAdapter(
            core.handler, settings, token=TOKEN, api_url=tg.api_url,
            webhook_url="https://bot.example/telegram/webhook" if webhook else None,
            webhook_secret=SECRET if webhook else None,
            on_decision=core.chat.decide if on_decision is WIRED else on_decision,
        )  # fmt: skip
        app = web.Application()
        adapter.mount(app)
        runner, port = await serve_locally(app)
        await adapter.start()
        try:
            yield Bot(adapter, core, tg, port, webhook)
        finally:
            await adapter.stop()
            await adapter.close()
            await runner.cleanup()


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def bot(
    tg: FakeTelegram, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Bot]:
    async with running(tg, approving(key_prefix, tmp_path), secrets, redis) as polling:
        yield polling


def requests_in(tg: FakeTelegram, chat_id: int) -> list[int]:
    """The ids of the bot's messages in the chat that show buttons."""
    return [message for chat, message in tg.markups if chat == chat_id]


async def asked_in_topic(bot: Bot, fake_openai: FakeOpenAI) -> tuple[int, int]:
    """Ann asks in a forum topic; the model wants the calculator: (question, request) ids."""
    fake_openai.push(SUM)
    question = text_message("/ask what is 6 times 7?", chat_id=GROUP, kind="supergroup",
                            from_id=ANN, topic=TOPIC)  # fmt: skip
    await bot.say(question)
    await wait_for(lambda: requests_in(bot.tg, GROUP) != [])
    [request] = requests_in(bot.tg, GROUP)
    return question["message_id"], request


def last_tool_result(fake_openai: FakeOpenAI) -> str:
    sent = fake_openai.chat_requests()[-1].messages[-1]
    assert sent["role"] == "tool"
    return str(sent["content"])


@pytest.mark.parametrize("webhook", [False, True], ids=["polling", "webhook"])
async def test_the_request_in_the_topic_is_decided_by_the_asker_and_the_answer_goes_on_there(
    webhook: bool,
    tg: FakeTelegram,
    fake_openai: FakeOpenAI,
    secrets: Secrets,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with running(tg, settings, secrets, redis, webhook=webhook) as bot:
        question, request = await asked_in_topic(bot, fake_openai)
        asked = tg.calls_of("setWebhook" if webhook else "getUpdates")[-1]
        assert "callback_query" in asked.params["allowed_updates"]

        [post] = [c for c in tg.calls_of("sendMessage") if "reply_markup" in c.params]
        assert int(post.params["message_thread_id"]) == TOPIC
        assert post.params["reply_parameters"]["message_id"] == question
        assert post.params["parse_mode"] == "HTML"
        shown = tg.messages[(GROUP, request)]
        assert "<b>Approval needed</b>" in shown and "<code>calculator</code>" in shown
        assert '"expression": "6*7"' in shown
        [(_, approve), _] = tg.buttons_of(GROUP, request)
        approval_id = approve.split(":")[1]
        assert await bot.core.store.approval(approval_id) is not None
        assert tg.buttons_of(GROUP, request) == [
            (APPROVE, f"ap:{approval_id}:y"), (DENY, f"ap:{approval_id}:n")
        ]  # fmt: skip
        assert len(fake_openai.chat_requests()) == 1  # the tool waits

        told = await bot.press(GROUP, request, APPROVE, from_id=BOB, first_name="Bob")
        assert told.show_alert and told.text == (
            "This is not yours to decide: Ann (or an admin) decides."
        )
        assert tg.buttons_of(GROUP, request) != []  # still waiting for Ann
        assert len(fake_openai.chat_requests()) == 1

        fake_openai.push(Reply(text="6 times 7 is **42**."))
        told = await bot.press(GROUP, request, APPROVE, from_id=ANN)
        assert told.text == "" and not told.show_alert  # the spinner stops, nothing more
        await wait_for(lambda: "6 times 7 is <b>42</b>." in tg.sent_texts(GROUP))
        assert tg.messages[(GROUP, request)] == "✅ Approved by Ann: <code>calculator</code>"
        assert tg.buttons_of(GROUP, request) == []
        assert "42" in last_tool_result(fake_openai)
        goes_on = tg.calls_of("sendMessage")[-1]
        assert int(goes_on.params["message_thread_id"]) == TOPIC
        assert goes_on.params["reply_parameters"]["message_id"] == question
        assert len(tg.answers) == 2  # one answer per press


async def test_a_double_press_decides_once(bot: Bot, fake_openai: FakeOpenAI) -> None:
    _, request = await asked_in_topic(bot, fake_openai)
    fake_openai.push(Reply(text="42."))
    first = bot.tg.press(GROUP, request, APPROVE, from_id=ANN)
    second = bot.tg.press(GROUP, request, APPROVE, from_id=ANN)  # one batch of getUpdates
    await wait_for(lambda: None not in (bot.tg.answered(first), bot.tg.answered(second)))
    await wait_for(lambda: "42." in bot.tg.sent_texts(GROUP))
    answers = sorted((a.text, a.show_alert) for a in bot.tg.answers)
    assert answers == [("", False), (GONE, True)]
    assert len(fake_openai.chat_requests()) == 2  # one continuation
    assert bot.tg.sent_texts(GROUP).count("42.") == 1


async def test_deny_in_a_private_chat_tells_the_model(bot: Bot, fake_openai: FakeOpenAI) -> None:
    fake_openai.push(SUM)
    await bot.say(text_message("what is 6 times 7?", chat_id=ANN, from_id=ANN))
    await wait_for(lambda: requests_in(bot.tg, ANN) != [])
    [request] = requests_in(bot.tg, ANN)
    [post] = [c for c in bot.tg.calls_of("sendMessage") if "reply_markup" in c.params]
    assert "reply_parameters" not in post.params  # a private answer replies to nothing
    fake_openai.push(Reply(text="Denied, so no sum."))
    told = await bot.press(ANN, request, DENY, from_id=ANN)
    assert told.text == ""
    await wait_for(lambda: "Denied, so no sum." in bot.tg.sent_texts(ANN))
    assert bot.tg.messages[(ANN, request)] == (
        "❌ Denied by Ann: <code>calculator</code> was not run."
    )
    assert bot.tg.buttons_of(ANN, request) == []
    assert json.loads(last_tool_result(fake_openai)) == {"error": "not run: the user denied it"}


async def test_a_press_after_expiry_says_so_and_the_model_is_told(
    tg: FakeTelegram,
    fake_openai: FakeOpenAI,
    secrets: Secrets,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    async with running(tg, approving(key_prefix, tmp_path, ttl=0.2), secrets, redis) as bot:
        _, request = await asked_in_topic(bot, fake_openai)
        started = time.time()
        await wait_for(lambda: time.time() > started + 0.3)
        fake_openai.push(Reply(text="It expired, so I did not calculate it."))
        await bot.press(GROUP, request, APPROVE, from_id=ANN)
        await wait_for(lambda: "It expired, so I did not calculate it." in tg.sent_texts(GROUP))
        assert tg.messages[(GROUP, request)] == (
            "⌛ This request expired: <code>calculator</code> was not run."
        )
        assert tg.buttons_of(GROUP, request) == []
        assert json.loads(last_tool_result(fake_openai)) == {
            "error": "not run: the approval request expired"
        }


async def test_a_restart_between_the_request_and_the_press_loses_nothing(
    tg: FakeTelegram,
    fake_openai: FakeOpenAI,
    secrets: Secrets,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with running(tg, settings, secrets, redis) as first:
        question, request = await asked_in_topic(first, fake_openai)
    async with running(tg, settings, secrets, redis) as second:  # a new process, same Redis
        fake_openai.push(Reply(text="42, after the restart."))
        told = await second.press(GROUP, request, APPROVE, from_id=ANN)
        assert told.text == ""
        await wait_for(lambda: "42, after the restart." in tg.sent_texts(GROUP))
        assert tg.buttons_of(GROUP, request) == []
        goes_on = tg.calls_of("sendMessage")[-1]
        assert int(goes_on.params["message_thread_id"]) == TOPIC
        assert goes_on.params["reply_parameters"]["message_id"] == question


async def test_a_stale_or_foreign_button_is_answered_and_nothing_runs(
    bot: Bot, fake_openai: FakeOpenAI
) -> None:
    await bot.say(text_message("hello", chat_id=ANN, from_id=ANN))
    await wait_for(lambda: bot.tg.sent_texts(ANN) == ["echo: hello"])
    [(_, message_id)] = [key for key in bot.tg.messages if key[0] == ANN]
    told = await bot.press(ANN, message_id, data="ap:AAAAAAAAAAAAAAAA:y", from_id=ANN)
    assert (told.text, told.show_alert) == (GONE, True)  # the core says so
    told = await bot.press(ANN, message_id, data="someone-elses:button", from_id=ANN)
    assert (told.text, told.show_alert) == ("", False)  # only the spinner stopped
    assert len(bot.tg.answers) == 2 and bot.tg.calls_of("editMessageText") == []
    assert len(fake_openai.chat_requests()) == 1


async def broken(
    decision: Decision, reply: DecisionReply, responder_for: Callable[[Message], Responder]
) -> None:
    raise RuntimeError("the store is on fire")


@pytest.mark.parametrize("on_decision", [None, broken], ids=["not wired", "failing"])
async def test_a_press_nobody_can_take_is_still_answered_once(
    on_decision: DecisionHandler | None,
    tg: FakeTelegram,
    fake_openai: FakeOpenAI,
    secrets: Secrets,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with running(tg, settings, secrets, redis, on_decision=on_decision) as bot:
        _, request = await asked_in_topic(bot, fake_openai)
        told = await bot.press(GROUP, request, APPROVE, from_id=ANN)
        if on_decision is None:
            assert (told.text, told.show_alert) == (UNHANDLED, True)
        else:
            assert (told.text, told.show_alert) == ("", False)
            assert "the approval press failed" in caplog.text  # logged, not said in the chat
        edits = [
            c for c in tg.calls_of("editMessageText") if int(c.params["message_id"]) == request
        ]
        assert len(tg.answers) == 1 and edits == []
        assert tg.buttons_of(GROUP, request) != [] and len(fake_openai.chat_requests()) == 1


def test_callback_data_fits_telegram_or_is_refused() -> None:
    assert callback_data("x" * 16, True) == "ap:" + "x" * 16 + ":y"
    assert len(callback_data("x" * 59, False).encode()) == 64
    with pytest.raises(ValueError, match="callback_data"):
        callback_data("x" * 60, True)
