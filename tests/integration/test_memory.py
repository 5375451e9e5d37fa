"""Long memory: past the token budget the oldest turns are summarised in the background,
after the answer was sent; the summary goes into the next prompt after the system prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bots.assembly import Core
from core.conversation.prompt import SUMMARY_PREFIX
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.helpers import RecordingResponder, user_message, wait_for
from tests.integration.factory import CoreFactory

LONG = "word " * 20  # about 30 tokens with the estimate


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


async def small_budget(build: CoreFactory) -> Core:
    return await build(
        context={"token_budget": 120, "max_turns": 40, "tokenizer": "estimate"},
        memory={"keep_tokens": 40},
    )


def streamed(fake: FakeOpenAI) -> list[Recorded]:
    return [r for r in fake.chat_requests() if r.body.get("stream")]


async def test_summary_written_after_the_budget_is_passed_and_used_next(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await small_budget(build)
    assert core.memory is not None
    await core.handler(
        user_message("my name is Ada and I like apricots " + LONG), RecordingResponder()
    )
    await core.handler(user_message("second " + LONG), RecordingResponder())
    assert core.memory.written == 0 and len(fake_openai.chat_requests()) == 2  # within budget

    # The third turn passes the budget: its answer, then (slowly) the summary.
    fake_openai.push(Reply(text="answer three"), Reply(text="Ada likes apricots.", ttft=0.4))
    third = RecordingResponder()
    await core.handler(user_message("third " + LONG), third)
    assert third.texts == ["answer three"]  # answered before the summary exists
    key = core.chat.conversation_key(user_message("x"))
    assert (await core.store.load(key)).summary == ""

    await wait_for(lambda: core.memory.written == 1, timeout=5)
    summary_request = fake_openai.chat_requests()[-1]
    assert not summary_request.body.get("stream")
    asked = summary_request.messages[-1]["content"]
    assert "Summary so far:\n(none yet)" in asked
    assert "User (user u1): my name is Ada and I like apricots" in asked
    stored = await core.store.load(key)
    assert stored.summary == "Ada likes apricots."
    assert [t.content for t in stored.history] == ["third " + LONG, "answer three"]

    await core.handler(user_message("what do I like?"), RecordingResponder())
    sent = streamed(fake_openai)[-1].messages
    assert sent[0]["content"] == "You are a test bot."
    assert sent[1] == {"role": "system", "content": SUMMARY_PREFIX + "Ada likes apricots."}
    assert [m["content"] for m in sent[2:]] == ["third " + LONG, "answer three", "what do I like?"]


async def test_summary_failure_trims_as_before(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await small_budget(build)
    assert core.memory is not None
    for i in range(2):
        await core.handler(user_message(f"turn {i} " + LONG), RecordingResponder())
    fake_openai.push(Reply(text="answer"), *[Reply("error", status=500, retry_after=0.01)] * 3)
    answered = RecordingResponder()
    await core.handler(user_message("turn 2 " + LONG), answered)
    assert answered.texts == ["answer"]
    await wait_for(lambda: core.memory.failed == 1, timeout=5)

    key = core.chat.conversation_key(user_message("x"))
    stored = await core.store.load(key)
    assert stored.summary == "" and len(stored.history) == 6  # nothing lost, nothing written

    later = RecordingResponder()
    await core.handler(user_message("still there?"), later)
    assert later.shown == "echo: still there?"
    sent = streamed(fake_openai)[-1].messages
    assert all(not m["content"].startswith(SUMMARY_PREFIX) for m in sent)
    assert sum(len(m["content"]) for m in sent) // 4 < 120  # trimmed to the budget


async def test_reset_while_summarising_discards_the_summary(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await small_budget(build)
    assert core.memory is not None
    for i in range(2):
        await core.handler(user_message(f"turn {i} " + LONG), RecordingResponder())
    fake_openai.push(Reply(text="answer"), Reply(text="stale summary", ttft=0.3))
    await core.handler(user_message("turn 2 " + LONG), RecordingResponder())
    await core.handler(user_message("/reset"), RecordingResponder())
    await wait_for(lambda: len(fake_openai.chat_requests()) == 4, timeout=5)
    await core.memory.close()
    stored = await core.store.load(core.chat.conversation_key(user_message("x")))
    assert stored.summary == "" and stored.history == []
    assert core.memory.written == 0
