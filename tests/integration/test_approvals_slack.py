"""Approval buttons on Slack, end to end: the real adapter (slack-bolt, slack-sdk) and the real
core (`build_core`, the test Redis) against the fake Slack and the fake OpenAI server.

The request is a Block Kit message where the answer goes; a press is delivered as Slack
delivers it (a signed `block_actions` form POST to the events URL, or a Socket Mode
envelope), and the tests read what Slack was sent: the request settled with `chat.update`,
the presser told with `chat.postEphemeral`, the answer going on in the same place.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from adapters.slack import SlackAdapter
from adapters.slack_approvals import APPROVE, DENY, SECTION_LIMIT
from adapters.slack_responders import NEEDS_YES
from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from tests.conftest import make_settings
from tests.fakes.common import serve_locally
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.fakes.slack import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    mention,
    message,
    sign,
)
from tests.helpers import wait_for

CHANNEL = "C0GENERAL"
ASKER, OTHER = "U0ANN", "U0BOB"
SUM = Reply(text="Let me work that out.", tool_calls=[Call("calculator", {"expression": "6*7"})])


@dataclass
class Bot:
    adapter: SlackAdapter
    core: Core
    slack: FakeSlack
    port: int

    async def post(self, body: str, content_type: str) -> int:
        url = f"http://127.0.0.1:{self.port}/slack/events"
        headers = {**sign(body), "Content-Type": content_type}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            return response.status

    async def event(self, event: dict[str, Any]) -> None:
        assert await self.post(json.dumps(event_body(event)), "application/json") == 200

    async def slash(self, text: str) -> None:
        form = {"command": "/ask", "text": text, "user_id": ASKER, "user_name": "ann",
                "channel_id": CHANNEL, "team_id": "T0TEST", "trigger_id": "13345.67.abc",
                "response_url": self.slack.response_url(CHANNEL, ASKER),
                "token": "unused"}  # fmt: skip
        assert await self.post(urlencode(form), "application/x-www-form-urlencoded") == 200


def approving(key_prefix: str, tmp_path: Path, ttl: float = 600.0, **slack: Any) -> Settings:
    return make_settings(
        key_prefix, tmp_path, platforms={"slack": slack},
        tools={"enabled": ["calculator"], "approve": ["calc*"], "approval_ttl": ttl},
    )  # fmt: skip


@asynccontextmanager
async def running(
    slack: FakeSlack, settings: Settings, secrets: Secrets, redis: Redis, *, socket: bool = False
) -> AsyncIterator[Bot]:
    """A bot process: its core on the test Redis, its Slack adapter on a local server."""
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        adapter = SlackAdapter(
            core.handler, settings, bot_token=BOT_TOKEN,
            signing_secret=None if socket else SIGNING_SECRET,
            app_token=APP_TOKEN if socket else None,
            api_url=slack.api_url, on_decision=core.chat.decide,
        )  # fmt: skip
        app = web.Application()
        adapter.mount(app)
        runner, port = await serve_locally(app)
        await adapter.start()
        slack.request_url = f"http://127.0.0.1:{port}/slack/events"
        try:
            yield Bot(adapter, core, slack, port)
        finally:
            await adapter.close()
            await runner.cleanup()


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Bot]:
    async with FakeSlack() as slack, running(
        slack, approving(key_prefix, tmp_path), secrets, redis
    ) as running_bot:  # fmt: skip
        yield running_bot


def requests_in(slack: FakeSlack, channel: str) -> list[str]:
    """The ts of every bot message in `channel` that shows buttons."""
    return [str(ts) for ts in slack.screen.keys(channel) if slack.buttons_of(str(ts))]


async def asked_in_thread(bot: Bot, fake_openai: FakeOpenAI) -> tuple[str, str]:
    """Ann mentions the bot; the model wants the calculator: (the thread, the request's ts)."""
    fake_openai.push(SUM)
    first = mention("what is 6 times 7?", channel=CHANNEL, user=ASKER)
    await bot.event(first)
    await wait_for(lambda: requests_in(bot.slack, CHANNEL) != [])
    [request] = requests_in(bot.slack, CHANNEL)
    return first["ts"], request


def last_tool_result(fake_openai: FakeOpenAI) -> str:
    sent = fake_openai.chat_requests()[-1].messages[-1]
    assert sent["role"] == "tool"
    return str(sent["content"])


async def test_the_request_is_posted_in_the_thread_and_the_askers_yes_goes_on_there(
    bot: Bot, fake_openai: FakeOpenAI
) -> None:
    thread, request = await asked_in_thread(bot, fake_openai)
    slack = bot.slack
    shown = slack.messages[request]
    assert shown["thread_ts"] == thread
    assert slack.texts_in(CHANNEL, thread)[0] == "Let me work that out."
    [section, actions] = slack.blocks_of(request)
    assert actions["type"] == "actions"
    assert section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"].startswith("🔐 *Approval needed*")
    assert "`calculator`" in section["text"]["text"] and "6*7" in section["text"]["text"]
    approve, deny = slack.buttons_of(request)
    assert (approve["action_id"], approve["style"], approve["text"]["text"]) == (
        APPROVE, "primary", "Approve")  # fmt: skip
    assert (deny["action_id"], deny["style"], deny["text"]["text"]) == (DENY, "danger", "Deny")
    assert approve["value"] == deny["value"] and approve["value"]
    assert shown["text"].startswith("🔐 *Approval needed*")  # the fallback text
    assert len(fake_openai.chat_requests()) == 1  # nothing ran yet

    fake_openai.push(Reply(text="6 times 7 is 42.", ttft=1.0))
    started = time.monotonic()
    assert await slack.press(request, APPROVE, user=ASKER, name="ann") == 200
    assert time.monotonic() - started < 0.9  # acked before the work (the model takes 1 s)
    await wait_for(lambda: slack.texts_in(CHANNEL, thread)[-1] == "6 times 7 is 42.")
    assert slack.buttons_of(request) == []
    assert slack.messages[request]["text"] == "✅ Approved by ann: `calculator`"
    assert "42" in last_tool_result(fake_openai)
    assert slack.ephemerals == []


async def test_another_user_is_told_alone_and_nothing_runs_then_the_asker_denies(
    bot: Bot, fake_openai: FakeOpenAI
) -> None:
    thread, request = await asked_in_thread(bot, fake_openai)
    slack = bot.slack
    assert await slack.press(request, APPROVE, user=OTHER, name="bob") == 200
    await wait_for(lambda: slack.ephemerals_to(OTHER) != [])
    [told] = slack.ephemerals
    assert told.text == f"This is not yours to decide: {ASKER} (or an admin) decides."
    assert (told.channel, told.thread_ts) == (CHANNEL, thread)
    assert len(slack.buttons_of(request)) == 2 and len(fake_openai.chat_requests()) == 1

    fake_openai.push(Reply(text="Fine, no calculation."))
    await slack.press(request, DENY, user=ASKER, name="ann")
    await wait_for(lambda: slack.texts_in(CHANNEL, thread)[-1] == "Fine, no calculation.")
    assert slack.messages[request]["text"] == "❌ Denied by ann: `calculator` was not run."
    assert slack.buttons_of(request) == []
    assert json.loads(last_tool_result(fake_openai)) == {"error": "not run: the user denied it"}


async def test_the_response_url_tells_the_presser_when_slack_refuses_the_ephemeral(
    bot: Bot, fake_openai: FakeOpenAI
) -> None:
    _, request = await asked_in_thread(bot, fake_openai)
    bot.slack.fail("chat.postEphemeral", "user_not_in_channel", status=200)
    await bot.slack.press(request, DENY, user=OTHER, name="bob")
    await wait_for(lambda: bot.slack.responses != [])
    [sent] = bot.slack.responses
    assert sent["response_type"] == "ephemeral" and sent["replace_original"] is False
    assert sent["text"].startswith("This is not yours to decide")
    assert len(bot.slack.buttons_of(request)) == 2


async def test_a_double_press_goes_on_once(bot: Bot, fake_openai: FakeOpenAI) -> None:
    thread, request = await asked_in_thread(bot, fake_openai)
    slack = bot.slack
    fake_openai.push(Reply(text="42."), Reply(text="a second continuation!"))
    await asyncio.gather(slack.press(request, APPROVE), slack.press(request, APPROVE))
    await wait_for(lambda: slack.ephemerals_to(ASKER) != [])
    await wait_for(lambda: slack.texts_in(CHANNEL, thread)[-1] == "42.")
    assert slack.ephemerals_to(ASKER) == ["This request was already decided, or has expired."]
    assert len(fake_openai.chat_requests()) == 2
    assert "a second continuation!" not in slack.texts_in(CHANNEL, thread)


async def test_a_press_after_expiry_says_so_and_the_model_is_told(
    fake_openai: FakeOpenAI, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving(key_prefix, tmp_path, ttl=0.2)
    async with FakeSlack() as slack, running(slack, settings, secrets, redis) as bot:
        thread, request = await asked_in_thread(bot, fake_openai)
        started = time.time()
        await wait_for(lambda: time.time() > started + 0.3)
        fake_openai.push(Reply(text="Too late, so I did not calculate it."))
        await slack.press(request, APPROVE)
        await wait_for(lambda: slack.texts_in(CHANNEL, thread)[-1].startswith("Too late"))
        assert slack.messages[request]["text"] == (
            "⌛ This request expired: `calculator` was not run."
        )
        assert slack.buttons_of(request) == []
        told = json.loads(last_tool_result(fake_openai))
        assert told == {"error": "not run: the approval request expired"}


async def test_a_restart_between_the_request_and_the_press_loses_nothing(
    fake_openai: FakeOpenAI, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with FakeSlack() as slack:
        async with running(slack, settings, secrets, redis) as first:
            thread, request = await asked_in_thread(first, fake_openai)
        async with running(slack, settings, secrets, redis) as second:  # a new process
            assert second.port != first.port
            fake_openai.push(Reply(text="42, after the restart."))
            assert await slack.press(request, APPROVE) == 200
            await wait_for(lambda: slack.texts_in(CHANNEL, thread)[-1] == "42, after the restart.")
            assert slack.messages[request]["text"] == "✅ Approved by ann: `calculator`"
            assert "42" in last_tool_result(fake_openai)


async def test_a_long_request_is_cut_into_sections_slack_takes(
    bot: Bot, fake_openai: FakeOpenAI
) -> None:
    """A section takes 3,000 characters (Slack refuses more with `invalid_blocks`); `&` is
    five in mrkdwn, so 1,500 of them (the request shows that much of the arguments) need
    three sections, the code block closed and reopened at each cut."""
    fake_openai.push(Reply(text="", tool_calls=[Call("calculator", {"expression": "&" * 1600})]))
    await bot.event(message("a long one"))
    await wait_for(lambda: requests_in(bot.slack, "D0ANN") != [])
    [request] = requests_in(bot.slack, "D0ANN")
    parts = [b["text"]["text"] for b in bot.slack.blocks_of(request) if b["type"] == "section"]
    assert len(parts) >= 3 and all(len(p) <= SECTION_LIMIT for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)  # each part's code block is closed
    for part in parts:  # no entity cut in two
        assert part.count("&") == part.count("amp;") == part.count("&amp;")


async def test_in_a_dm_over_socket_mode(
    fake_openai: FakeOpenAI, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with (
        FakeSlack(streaming=False) as slack,
        running(slack, settings, secrets, redis, socket=True),
    ):
        await wait_for(lambda: slack.connected.is_set())
        fake_openai.push(SUM)
        await slack.envelope(event_body(message("what is 6 times 7?")))
        await wait_for(lambda: requests_in(slack, "D0ANN") != [])
        [request] = requests_in(slack, "D0ANN")
        assert slack.messages[request]["thread_ts"] is None  # DMs answer at the top
        fake_openai.push(Reply(text="42, over the socket.", ttft=1.0))
        acked = len(slack.acks)
        await slack.press(request, APPROVE, socket=True)
        await wait_for(lambda: len(slack.acks) > acked, timeout=0.9)  # before the work
        await wait_for(lambda: slack.texts_in("D0ANN")[-1] == "42, over the socket.")
        assert slack.messages[request]["text"].startswith("✅ Approved by ann")


async def test_a_private_slash_answer_asks_in_the_dm_and_goes_on_there(
    fake_openai: FakeOpenAI, secrets: Secrets, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    """An ephemeral message cannot be updated (its buttons would stay) and the channel must
    not see a private answer: the request goes to the asker's DM, and so does the rest."""
    settings = approving(key_prefix, tmp_path, ephemeral=True)
    async with FakeSlack() as slack, running(slack, settings, secrets, redis) as bot:
        fake_openai.push(SUM)
        await bot.slash("what is 6 times 7?")
        dm = f"D{ASKER}"  # what the fake's conversations.open gives
        await wait_for(lambda: requests_in(slack, dm) != [])
        await wait_for(lambda: NEEDS_YES in slack.ephemerals_to(ASKER))
        assert [r["text"] for r in slack.responses] == ["Let me work that out.", NEEDS_YES]
        fake_openai.push(Reply(text="42, in private."))
        [request] = requests_in(slack, dm)
        await slack.press(request, APPROVE)
        await wait_for(lambda: slack.texts_in(dm)[-1:] == ["42, in private."])
        assert slack.texts_in(CHANNEL) == []
