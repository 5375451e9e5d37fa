"""Tools that run only after a person says yes: through the whole core on the test Redis and
the fake OpenAI server (the platforms' buttons are tested per adapter)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from core.model import Decision, Message, User
from core.protocols import Responder
from core.storage import Person
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import ApprovingResponder, PressReply, user_message, wait_for


def approving(settings: Settings, ttl: float = 600.0) -> Settings:
    tools = settings.tools.model_copy(
        update={"enabled": ["calculator"], "approve": ["calc*"], "approval_ttl": ttl}
    )
    return settings.model_copy(update={"tools": tools})


@pytest.fixture
async def core(settings: Settings, secrets: Secrets, redis: Redis) -> AsyncIterator[Core]:
    async with AsyncExitStack() as stack:
        yield await build_core(stack, approving(settings), secrets, redis=redis)


class Replies:
    """`responder_for`: where the continued answer goes, kept for the test to read."""

    def __init__(self) -> None:
        self.made: list[ApprovingResponder] = []

    def __call__(self, message: Message) -> Responder:
        self.made.append(ApprovingResponder())
        return self.made[-1]


async def ask_for_sum(core: Core, fake_openai: FakeOpenAI, **who: object) -> ApprovingResponder:
    fake_openai.push(Reply(text="Let me work that out.",
                           tool_calls=[Call("calculator", {"expression": "6*7"})]))  # fmt: skip
    responder = ApprovingResponder()
    await core.handler(user_message("what is 6 times 7?", **who), responder)  # type: ignore[arg-type]
    return responder


def press(request_id: str, approve: bool, user: str = "u1", admin: bool = False) -> Decision:
    return Decision(request_id, approve, User(user, f"user {user}", is_admin=admin), "console")


async def test_the_tool_waits_for_a_yes_and_the_answer_goes_on_after_it(
    core: Core, fake_openai: FakeOpenAI
):
    asked = await ask_for_sum(core, fake_openai)
    [request] = asked.requests
    assert "`calculator`" in request.text and '"expression": "6*7"' in request.text
    assert asked.texts[0] == "Let me work that out."
    assert len(fake_openai.chat_requests()) == 1  # the tool did not run
    key = core.chat.conversation_key(user_message("x"))
    history = [t.content for t in (await core.store.load(key)).history]
    assert history == ["what is 6 times 7?",
                       "Let me work that out.\n\n[waiting for approval: `calculator`]"]  # fmt: skip

    other = ApprovingResponder()  # the conversation is not locked while the person decides
    await core.handler(user_message("meanwhile, hello"), other)
    assert other.texts == ["echo: meanwhile, hello"]

    replies, answer = Replies(), PressReply()
    fake_openai.push(Reply(text="6 times 7 is 42."))
    await core.chat.decide(press(request.id, True), answer, replies)
    assert answer.settled == ["✅ Approved by user u1: `calculator`"] and answer.notices == []
    tool_result = fake_openai.chat_requests()[-1].messages[-1]
    assert tool_result["role"] == "tool" and "42" in tool_result["content"]
    assert replies.made[0].texts == ["6 times 7 is 42."]
    history = [t.content for t in (await core.store.load(key)).history]
    assert history[-1] == "6 times 7 is 42."


async def test_anyone_else_is_told_it_is_not_theirs_and_an_admin_may_decide(
    core: Core, fake_openai: FakeOpenAI
):
    [request] = (await ask_for_sum(core, fake_openai)).requests
    replies, answer = Replies(), PressReply()
    await core.chat.decide(press(request.id, True, user="mallory"), answer, replies)
    assert answer.notices == ["This is not yours to decide: user u1 (or an admin) decides."]
    assert replies.made == [] and answer.settled == []
    fake_openai.push(Reply(text="Denied, so no sum."))
    await core.chat.decide(press(request.id, False, user="boss", admin=True), answer, replies)
    assert answer.settled == ["❌ Denied by user boss: `calculator` was not run."]
    told = fake_openai.chat_requests()[-1].messages[-1]["content"]
    assert json.loads(told) == {"error": "not run: the user denied it"}
    assert replies.made[0].texts == ["Denied, so no sum."]


async def test_a_double_press_decides_once(core: Core, fake_openai: FakeOpenAI):
    [request] = (await ask_for_sum(core, fake_openai)).requests
    replies = Replies()
    first, second = PressReply(), PressReply()
    fake_openai.push(Reply(text="42."))
    await asyncio.gather(
        core.chat.decide(press(request.id, True), first, replies),
        core.chat.decide(press(request.id, True), second, replies),
    )
    assert len(replies.made) == 1
    assert sorted([first.notices, second.notices]) == [
        [],
        ["This request was already decided, or has expired."],
    ]
    assert len(fake_openai.chat_requests()) == 2  # one continuation


async def test_a_press_after_expiry_says_so_and_the_model_is_told(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    async with AsyncExitStack() as stack:
        core = await build_core(stack, approving(settings, ttl=0.2), secrets, redis=redis)
        [request] = (await ask_for_sum(core, fake_openai)).requests
        started = time.time()
        await wait_for(lambda: time.time() > started + 0.3)
        replies, answer = Replies(), PressReply()
        fake_openai.push(Reply(text="It expired, so I did not calculate it."))
        await core.chat.decide(press(request.id, True), answer, replies)
        assert answer.settled == ["⌛ This request expired: `calculator` was not run."]
        told = fake_openai.chat_requests()[-1].messages[-1]["content"]
        assert json.loads(told) == {"error": "not run: the approval request expired"}


async def test_a_restart_between_the_request_and_the_press_loses_nothing(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    async with AsyncExitStack() as stack:
        first = await build_core(stack, approving(settings), secrets, redis=redis)
        [request] = (await ask_for_sum(first, fake_openai)).requests
    async with AsyncExitStack() as stack:  # another process, after the first is gone
        second = await build_core(stack, approving(settings), secrets, redis=redis)
        replies, answer = Replies(), PressReply()
        fake_openai.push(Reply(text="42, after the restart."))
        await second.chat.decide(press(request.id, True), answer, replies)
        assert replies.made[0].texts == ["42, after the restart."]
        assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]


async def test_the_pending_approval_is_in_the_export_and_goes_with_erasure(
    core: Core, fake_openai: FakeOpenAI
):
    [request] = (await ask_for_sum(core, fake_openai, private=True)).requests
    exported = ApprovingResponder()
    await core.handler(user_message("/mydata", private=True), exported)
    document = json.loads(exported.sent_files[0].data)
    [pending] = document["pending_approvals"]
    assert pending["tools"] == ["calculator"] and pending["arguments"] == [{"expression": "6*7"}]
    assert (await core.store.erase(Person("console", "u1"))).approvals == 1
    assert await core.store.approval(request.id) is None
