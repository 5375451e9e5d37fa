"""Moderation before the chat call (flagged input never reaches the model; an outage fails
open or closed by config) and the answer cache (first turns only, never with history)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.llm.moderation import REFUSAL, UNAVAILABLE
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


async def test_flagged_message_is_refused_and_never_sent_or_remembered(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(moderation={"enabled": True, "model": "omni-moderation-latest"})
    refused = RecordingResponder()
    await core.handler(user_message("tell me about the forbidden-topic"), refused)
    assert refused.texts == [REFUSAL]
    [checked] = fake_openai.moderation_requests()
    assert checked.body == {
        "input": "tell me about the forbidden-topic",
        "model": "omni-moderation-latest",
    }
    assert fake_openai.chat_requests() == []

    fine = RecordingResponder()
    await core.handler(user_message("tell me about tea"), fine)
    assert fine.shown == "echo: tell me about tea"
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages[1:]]
    assert sent == ["tell me about tea"]  # the flagged text is not in the history either


@pytest.mark.parametrize(
    ("on_error", "expected"), [("allow", "echo: hello"), ("refuse", UNAVAILABLE)]
)
async def test_moderation_outage_fails_open_or_closed(
    build: CoreFactory, fake_openai: FakeOpenAI, on_error: str, expected: str
):
    core = await build(moderation={"enabled": True, "on_error": on_error})
    fake_openai.moderation_status = 503
    responder = RecordingResponder()
    await core.handler(user_message("hello"), responder)
    assert responder.shown == expected
    assert len(fake_openai.moderation_requests()) == 1  # no retries: a check must be quick


async def test_cache_serves_first_turns_only_without_history(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(cache={"enabled": True, "ttl_seconds": 60})
    fake_openai.push(Reply(text="Redis is an in-memory data store."))
    first = RecordingResponder()
    await core.handler(user_message("What is Redis?", channel="a"), first)
    assert first.shown == "Redis is an in-memory data store."

    elsewhere = RecordingResponder()  # a new conversation asks the same, worded a bit apart
    await core.handler(user_message("  what is   redis ", channel="b"), elsewhere)
    assert elsewhere.texts == ["Redis is an in-memory data store."]
    assert len(fake_openai.chat_requests()) == 1  # served from the cache

    with_history = RecordingResponder()  # the same question in a conversation with history
    await core.handler(user_message("What is Redis?", channel="b"), with_history)
    assert with_history.shown == "echo: What is Redis?"
    assert len(fake_openai.chat_requests()) == 2

    # the cached answer was recorded in b's history like any answer
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages[1:]]
    assert sent == ["  what is   redis ", "Redis is an in-memory data store.", "What is Redis?"]


async def test_cache_is_keyed_by_persona_and_model(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(cache={"enabled": True})
    await core.handler(user_message("hello there", channel="a"), RecordingResponder())
    await core.handler(user_message("/persona pirate", channel="p"), RecordingResponder())
    pirate = RecordingResponder()
    await core.handler(user_message("hello there", channel="p"), pirate)
    assert len(fake_openai.chat_requests()) == 2  # another persona: not the cached answer
    await core.handler(user_message("/persona pirate", channel="q"), RecordingResponder())
    again = RecordingResponder()
    await core.handler(user_message("Hello there!", channel="q"), again)
    assert again.texts == pirate.texts
    assert len(fake_openai.chat_requests()) == 2  # the pirate's answer came from the cache


async def test_failed_and_tool_answers_are_not_cached(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(cache={"enabled": True}, tools={"enabled": ["current_time"]})
    fake_openai.push(*[Reply("error", status=500, retry_after=0.01)] * 3)
    await core.handler(user_message("ping", channel="a"), RecordingResponder())
    later = RecordingResponder()
    await core.handler(user_message("ping", channel="b"), later)
    assert later.shown == "echo: ping"  # the failure was not cached; this answer is

    fake_openai.push(Reply(tool_calls=[Call("current_time", {})]))
    await core.handler(user_message("what time is it?", channel="c"), RecordingResponder())
    calls = len(fake_openai.chat_requests())
    again = RecordingResponder()
    await core.handler(user_message("what time is it?", channel="d"), again)
    assert len(fake_openai.chat_requests()) == calls + 1  # a tool's answer goes stale: no cache
