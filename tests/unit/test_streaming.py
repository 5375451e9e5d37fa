"""The streaming responder: exact platform calls for a stream of deltas."""

from __future__ import annotations

import asyncio

import pytest

from core.streaming import DeliveryError, StreamingReply, reply
from tests.helpers import RecordingResponder


async def test_first_text_posted_at_once_then_final_edit():
    responder = RecordingResponder(edit_interval=10.0)
    async with StreamingReply(responder) as answer:
        answer.feed("Hel")
        await asyncio.sleep(0)  # let the flusher run
        await asyncio.sleep(0)
        answer.feed("lo")
        text = await answer.finish()
    assert text == "Hello"
    sends = [c for c in responder.calls if c.kind == "send"]
    edits = [c for c in responder.calls if c.kind == "edit"]
    assert [(c.text, c.final) for c in sends] == [("Hel", False)]
    assert [(c.text, c.final) for c in edits] == [("Hello", True)]  # interval not yet passed


async def test_edits_are_throttled_to_the_interval():
    responder = RecordingResponder(edit_interval=0.2)
    loop = asyncio.get_running_loop()
    async with StreamingReply(responder) as answer:
        started = loop.time()
        while loop.time() - started < 1.0:
            answer.feed("x")
            await asyncio.sleep(0.005)
        await answer.finish()
    interim = [c for c in responder.calls if c.kind == "edit" and not c.final]
    assert 2 <= len(interim) <= 6  # ~1 s of deltas at one edit per 0.2 s
    assert responder.calls[-1].final
    assert responder.texts == ["x" * responder.texts[0].count("x")]


async def test_whitespace_only_start_is_not_posted():
    responder = RecordingResponder()
    async with StreamingReply(responder) as answer:
        answer.feed("\n  ")
        await asyncio.sleep(0.01)
        assert not [c for c in responder.calls if c.kind == "send"]
        answer.feed("text")
        await answer.finish()
    assert responder.texts == ["\n  text"]


async def test_long_answer_continues_in_new_messages_with_exact_parts():
    responder = RecordingResponder(limit=50)
    words = [f"w{i:03d} " for i in range(40)]  # 200 characters
    async with StreamingReply(responder) as answer:
        for word in words:
            answer.feed(word)
            await asyncio.sleep(0)
        text = await answer.finish()
    assert text == "".join(words)
    assert len(responder.texts) >= 4
    assert all(len(t) <= 50 for t in responder.texts)
    assert "".join(responder.texts) == text
    finals = [c for c in responder.calls if c.final]
    assert len(finals) == len(responder.texts)  # every part ends with a final state


async def test_failed_final_edit_is_retried_then_sent_anew():
    responder = RecordingResponder(edit_interval=10.0)
    async with StreamingReply(responder, retry_delay=0.01) as answer:
        answer.feed("partial")
        await asyncio.sleep(0.01)
        answer.feed(" and the rest")
        responder.fail_edits = 2
        await answer.finish()
    sent_anew, removed = responder.calls[-2:]
    assert sent_anew.kind == "send" and sent_anew.final
    assert sent_anew.text == "partial and the rest"
    first_send = next(c for c in responder.calls if c.kind == "send")
    assert removed.kind == "delete" and removed.ref == first_send.ref  # the partial
    assert responder.texts == ["partial and the rest"]  # one message left: the whole answer


async def test_send_failing_every_time_raises_delivery_error():
    responder = RecordingResponder(fail_sends=5)
    with pytest.raises(DeliveryError):
        async with StreamingReply(responder, retry_delay=0.001) as answer:
            answer.feed("hi")
            await answer.finish()


async def test_typing_is_renewed_until_the_answer_is_done():
    responder = RecordingResponder(typing_interval=0.05)
    async with StreamingReply(responder) as answer:
        await asyncio.sleep(0.18)
        answer.feed("done")
        await answer.finish()
    typing = [c for c in responder.calls if c.kind == "typing"]
    assert 3 <= len(typing) <= 5
    count = len(responder.calls)
    await asyncio.sleep(0.1)
    assert len(responder.calls) == count  # nothing after the end


async def test_reply_splits_plain_answers():
    responder = RecordingResponder(limit=20)
    await reply(responder, "one two three four five six seven")
    assert all(c.final and len(c.text) <= 20 for c in responder.calls)
    assert "".join(responder.texts) == "one two three four five six seven"
