"""Approval buttons on Discord, end to end (issue #19): the real adapter and discord.py against
the fake gateway and REST API, the real core from `build_core` on the test Redis, and the fake
OpenAI server asking for the calculator, a tool marked `approve`.

The request is a reply to the question (a follow-up for a slash command, a message in the
thread with `open_threads`) with Approve and Deny; a press arrives as Discord delivers it, an
INTERACTION_CREATE of type 3, and is acknowledged within 3 s before the core decides."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio import Redis

from adapters.discord import DiscordAdapter
from adapters.discord_approvals import UNHANDLED, fit
from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from tests.fakes.discord import BOT_ID, CHANNEL, TOKEN, FakeDiscord, Press, human
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import wait_for
from tests.integration.test_approvals import approving
from tests.integration.test_discord import _settings, pings_nobody

BOB = human("930000000000000002", "bob")
GONE = "This request was already decided, or has expired."
NOT_YOURS = "This is not yours to decide: ann (or an admin) decides."


@dataclass
class Bot:
    core: Core
    adapter: DiscordAdapter


@contextlib.asynccontextmanager
async def running(
    discord: FakeDiscord,
    settings: Settings,
    redis: Redis,
    fake_openai: FakeOpenAI,
    *,
    decides: bool = True,
) -> AsyncIterator[Bot]:
    """The core and the Discord adapter, with `on_decision` wired as bots/ wires it (or, not
    `decides`, left out)."""
    secrets = Secrets(openai_api_key=SecretStr("sk-test-not-a-real-key"),
                      openai_base_url=fake_openai.base_url)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        adapter = DiscordAdapter(core.handler, core.store, settings, token=TOKEN,
                                 api_url=discord.api_url, gateway_url=discord.gateway_url,
                                 on_decision=core.chat.decide if decides else None)  # fmt: skip
        await adapter.start()
        stack.push_async_callback(adapter.close)
        yield Bot(core, adapter)


def approving_discord(
    key_prefix: str, tmp_path: Path, ttl: float = 600.0, **discord: Any
) -> Settings:
    return approving(_settings(key_prefix, tmp_path, **discord), ttl)


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture
async def bot(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Bot]:
    async with running(discord, approving_discord(key_prefix, tmp_path), redis,
                       fake_openai) as running_bot:  # fmt: skip
        yield running_bot


def wants_the_sum(fake_openai: FakeOpenAI) -> None:
    fake_openai.push(Reply(text="Let me work that out.",
                           tool_calls=[Call("calculator", {"expression": "6*7"})]))  # fmt: skip


async def ask_for_sum(discord: FakeDiscord, fake_openai: FakeOpenAI) -> tuple[str, str]:
    """A mention asking for the sum; the question's id and the request message's."""
    wants_the_sum(fake_openai)
    question = await discord.user_says(f"<@{BOT_ID}> what is 6 times 7?", mention_bot=True)
    return question["id"], await request_in(discord, CHANNEL)


async def request_in(discord: FakeDiscord, channel: str) -> str:
    """The id of the bot's message with buttons in `channel`, once there is one."""

    def find() -> str | None:
        return next((str(k) for k in discord.screen.keys(channel) if discord.buttons(str(k))), None)

    await wait_for(lambda: find() is not None)
    found = find()
    assert found is not None
    return found


def told_to_model(fake_openai: FakeOpenAI) -> Any:
    return json.loads(fake_openai.chat_requests()[-1].messages[-1]["content"])


def answered_in_time(discord: FakeDiscord, press: Press) -> bool:
    """The interaction's callback came once, a deferred update, within Discord's 3 s."""
    [callback] = discord.calls_to("POST", f"/interactions/{press.id}/")
    return press.response == 6 and callback.at - press.at < 3


async def test_the_request_replies_to_the_question_and_the_answer_goes_on_after_approve(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    question, request = await ask_for_sum(discord, fake_openai)
    [posted] = [c for c in discord.calls_to("POST", f"/channels/{CHANNEL}/messages")
                if c.body.get("components")]  # fmt: skip
    assert str(posted.body["message_reference"]["message_id"]) == question
    assert discord.messages[request]["message_reference"]["message_id"] == question
    assert pings_nobody(posted.body)
    text = discord.messages[request]["content"]
    assert text.startswith("🔐 **Approval needed**") and len(text) <= 2000
    assert "`calculator`" in text and '"expression": "6*7"' in text
    [row] = discord.messages[request]["components"]
    assert row["type"] == 1
    [approve, deny] = row["components"]
    request_id = approve["custom_id"].split(":")[1]
    assert (approve["style"], approve["label"], approve["custom_id"]) == (
        3, "Approve", f"approval:{request_id}:yes")  # fmt: skip
    assert (deny["style"], deny["label"], deny["custom_id"]) == (
        4, "Deny", f"approval:{request_id}:no")  # fmt: skip
    assert discord.texts_in(CHANNEL) == ["Let me work that out.", text]
    assert len(fake_openai.chat_requests()) == 1  # nothing ran yet

    fake_openai.push(Reply(text="6 times 7 is 42."))
    press = await discord.press(request, "Approve")
    await wait_for(lambda: discord.texts_in(CHANNEL)[-1:] == ["6 times 7 is 42."])
    assert answered_in_time(discord, press)
    assert discord.messages[request]["content"] == "✅ Approved by ann: `calculator`"
    assert discord.buttons(request) == []  # the buttons are gone
    assert discord.texts_in(CHANNEL) == [
        "Let me work that out.", "✅ Approved by ann: `calculator`", "6 times 7 is 42.",
    ]  # fmt: skip
    assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]  # the tool ran
    assert discord.ephemerals == []


async def test_someone_else_is_told_it_is_not_theirs_and_nothing_runs(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    _, request = await ask_for_sum(discord, fake_openai)
    press = await discord.press(request, "Approve", user=BOB)
    await wait_for(lambda: len(discord.ephemerals) == 1)
    assert answered_in_time(discord, press)
    [notice] = discord.ephemerals
    assert (notice.user, notice.content, notice.token) == (BOB["id"], NOT_YOURS, press.token)
    assert [b["label"] for b in discord.buttons(request)] == ["Approve", "Deny"]  # untouched
    assert discord.messages[request]["content"].startswith("🔐")
    assert len(fake_openai.chat_requests()) == 1
    assert NOT_YOURS not in discord.texts_in(CHANNEL)  # only bob saw it


async def test_the_bots_admin_may_deny_and_the_model_is_told_not_a_server_administrator(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving_discord(key_prefix, tmp_path, admins=[BOB["id"]])
    async with running(discord, settings, redis, fake_openai):
        _, request = await ask_for_sum(discord, fake_openai)
        carol = human("930000000000000003", "carol")
        await discord.press(request, "Deny", user=carol, admin=True)  # a server Administrator
        await wait_for(lambda: len(discord.ephemerals) == 1)
        assert discord.buttons(request) != []  # not the bot's admin: nothing decided
        fake_openai.push(Reply(text="Denied, so no sum."))
        await discord.press(request, "Deny", user=BOB)
        await wait_for(lambda: discord.texts_in(CHANNEL)[-1:] == ["Denied, so no sum."])
        settled = "❌ Denied by bob: `calculator` was not run."
        assert discord.messages[request]["content"] == settled and discord.buttons(request) == []
        assert told_to_model(fake_openai) == {"error": "not run: the user denied it"}


async def test_a_double_press_continues_once(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    _, request = await ask_for_sum(discord, fake_openai)
    fake_openai.push(Reply(text="42, once."))
    first = await discord.press(request, "Approve")
    second = await discord.press(request, "Approve")  # before the first is settled
    await wait_for(lambda: "42, once." in discord.texts_in(CHANNEL))
    await wait_for(lambda: len(discord.ephemerals) == 1)
    assert answered_in_time(discord, first) and answered_in_time(discord, second)
    assert [e.content for e in discord.ephemerals] == [GONE]
    assert discord.texts_in(CHANNEL).count("42, once.") == 1
    assert len(fake_openai.chat_requests()) == 2  # one continuation


async def test_a_press_after_expiry_says_so_and_the_model_is_told(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving_discord(key_prefix, tmp_path, ttl=0.2)
    async with running(discord, settings, redis, fake_openai):
        _, request = await ask_for_sum(discord, fake_openai)
        asked = time.monotonic()
        await wait_for(lambda: time.monotonic() > asked + 0.3)
        fake_openai.push(Reply(text="It expired, so I did not calculate it."))
        await discord.press(request, "Approve")
        said = "It expired, so I did not calculate it."
        await wait_for(lambda: said in discord.texts_in(CHANNEL))
        expired = "⌛ This request expired: `calculator` was not run."
        assert discord.messages[request]["content"] == expired and discord.buttons(request) == []
        assert told_to_model(fake_openai) == {"error": "not run: the approval request expired"}


async def test_a_new_process_takes_the_press_on_a_message_the_old_one_posted(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving_discord(key_prefix, tmp_path)
    async with running(discord, settings, redis, fake_openai):
        _, request = await ask_for_sum(discord, fake_openai)
    async with running(discord, settings, redis, fake_openai):  # the old one is gone
        fake_openai.push(Reply(text="42, after the restart."))
        press = await discord.press(request, "Approve")
        await wait_for(lambda: discord.texts_in(CHANNEL)[-1:] == ["42, after the restart."])
        assert answered_in_time(discord, press)
        assert discord.messages[request]["content"] == "✅ Approved by ann: `calculator`"
        assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]


async def test_a_slash_command_asks_in_its_follow_up(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    wants_the_sum(fake_openai)
    sent = await discord.slash("ask", {"question": "what is 6 times 7?"})
    request = await request_in(discord, CHANNEL)
    assert discord.messages[request]["token"] == sent["token"]  # the interaction's follow-up
    [posted] = [c for c in discord.calls_to("POST", f"/webhooks/{sent['application_id']}/")
                if c.body.get("components")]  # fmt: skip
    assert pings_nobody(posted.body)
    assert discord.texts_in(CHANNEL)[0] == "Let me work that out."  # the original response
    fake_openai.push(Reply(text="6 times 7 is 42."))
    await discord.press(request, "Approve")
    await wait_for(lambda: discord.texts_in(CHANNEL)[-1:] == ["6 times 7 is 42."])
    assert discord.messages[request]["content"] == "✅ Approved by ann: `calculator`"


async def test_in_a_thread_the_request_and_the_answer_stay_in_the_thread(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving_discord(key_prefix, tmp_path, open_threads=True)
    async with running(discord, settings, redis, fake_openai):
        wants_the_sum(fake_openai)
        await discord.user_says(f"<@{BOT_ID}> what is 6 times 7?", mention_bot=True)
        await wait_for(lambda: len(discord.threads) == 1)
        thread = next(iter(discord.threads))
        request = await request_in(discord, thread)
        fake_openai.push(Reply(text="6 times 7 is 42."))
        await discord.press(request, "Approve")
        await wait_for(lambda: discord.texts_in(thread)[-1:] == ["6 times 7 is 42."])
        assert discord.texts_in(thread)[1] == "✅ Approved by ann: `calculator`"
        assert discord.texts_in(CHANNEL) == []


async def test_a_press_on_an_unknown_request_or_another_component(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    _, request = await ask_for_sum(discord, fake_openai)
    unknown = await discord.press(request, custom_id="approval:no-such-request:yes")
    await wait_for(lambda: [e.content for e in discord.ephemerals] == [GONE])
    assert answered_in_time(discord, unknown)
    other = await discord.press(request, custom_id="poll:1:yes")  # not ours: left alone
    await discord.user_says(f"<@{BOT_ID}> still there?", mention_bot=True)
    await wait_for(lambda: any("still there?" in t for t in discord.texts_in(CHANNEL)))
    assert other.response is None
    assert discord.buttons(request) != []


async def test_a_long_request_fits_one_message_and_keeps_its_last_line(
    bot: Bot, discord: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    long = [Call("calculator", {"expression": "1+" * 700 + "1"}) for _ in range(3)]
    fake_openai.push(Reply(text="Three sums.", tool_calls=long))
    await discord.user_says(f"<@{BOT_ID}> add them all", mention_bot=True)
    text = discord.messages[await request_in(discord, CHANNEL)]["content"]
    assert len(text) <= 2000
    assert text.count("```") % 2 == 0  # a code block cut open is closed
    assert text.endswith("only they (or an admin) can decide, within 10 min.")


@given(st.text(max_size=3000), st.text(alphabet="`\nab", max_size=3000))
def test_fit_keeps_the_limit_and_closes_code_blocks(head: str, fences: str) -> None:
    for text in (head, fences, head + "\n```json\n" + fences + "\nAsked by ann"):
        shown = fit(text)
        assert len(shown) <= 2000
        if len(text) <= 2000:
            assert shown == text
        elif text.count("```") % 2 == 0 and "Asked by ann" in text:
            assert shown.count("```") % 2 == 0 and shown.endswith("Asked by ann")


async def test_a_bot_without_decisions_still_answers_the_press(
    discord: FakeDiscord, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = approving_discord(key_prefix, tmp_path)
    async with running(discord, settings, redis, fake_openai, decides=False):
        _, request = await ask_for_sum(discord, fake_openai)
        press = await discord.press(request, "Approve")
        await wait_for(lambda: [e.content for e in discord.ephemerals] == [UNHANDLED])
        assert press.response == 4 and discord.ephemerals[0].via == "callback"
        assert discord.buttons(request) != [] and len(fake_openai.chat_requests()) == 1
