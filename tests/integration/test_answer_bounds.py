"""Answers have an upper bound: a model that streams without end is cut at
`llm.max_answer_chars` or `streaming.max_messages`, the stream is closed, the shown text ends
with a short note, and the history records what was shown.

Before: an endless model gave 182 Slack messages (707,000 characters) in 75 s and went on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bots.assembly import Core
from core.streaming.reply import CAP_NOTE
from core.streaming.splitting import open_fence
from tests.fakes.openai_server import ENDLESS_BOUND, FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory


@pytest.fixture
async def core_factory(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


async def _history(core: Core) -> list[str]:
    conversation = await core.store.load(core.chat.conversation_key(user_message("x")))
    return [turn.content for turn in conversation.history]


async def test_an_endless_answer_is_cut_at_max_answer_chars(
    core_factory: CoreFactory, fake_openai: FakeOpenAI
):
    core = await core_factory(llm={"max_answer_chars": 5000})
    fake_openai.push(Reply(kind="endless"))
    responder = RecordingResponder(limit=4000)
    await core.handler(user_message("talk forever"), responder)
    shown = responder.shown
    assert shown.endswith(CAP_NOTE)
    assert len(shown) == 5000 + len(CAP_NOTE)
    assert len(responder.texts) == 2
    assert await _history(core) == ["talk forever", "".join(responder.texts)]
    request = fake_openai.chat_requests()[-1]
    assert 0 < request.hung_up_after < ENDLESS_BOUND  # the bot closed the stream


async def test_an_endless_answer_is_cut_at_max_messages(
    core_factory: CoreFactory, fake_openai: FakeOpenAI
):
    core = await core_factory(llm={"max_answer_chars": 0}, streaming={"max_messages": 3})
    fake_openai.push(Reply(kind="endless"))
    responder = RecordingResponder(limit=2000)
    await core.handler(user_message("talk forever"), responder)
    assert len(responder.texts) == 3
    assert all(len(text) <= 2000 for text in responder.texts)
    assert responder.texts[-1].endswith(CAP_NOTE)
    assert await _history(core) == ["talk forever", "".join(responder.texts)]
    assert 0 < fake_openai.chat_requests()[-1].hung_up_after < ENDLESS_BOUND


async def test_an_answer_cut_inside_a_code_block_closes_it_before_the_note(
    core_factory: CoreFactory, fake_openai: FakeOpenAI
):
    core = await core_factory(llm={"max_answer_chars": 300})
    fake_openai.push(Reply(text="Here:\n\n```python\n" + "x = 1  # a line of code\n" * 40))
    responder = RecordingResponder(limit=4000)
    await core.handler(user_message("code please"), responder)
    shown = responder.shown
    assert shown.endswith("\n```" + CAP_NOTE)  # the fence is closed: the note is text
    assert open_fence(shown) is None
