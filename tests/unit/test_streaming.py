"""The streaming responder: exact platform calls for a stream of deltas."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.model import MessageRef
from core.streaming.reply import DeliveryError, StreamingReply, reply
from tests.helpers import RecordingResponder, wait_for


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


async def test_an_answer_sooner_than_the_typing_delay_gets_no_typing_signal():
    responder = RecordingResponder(typing_interval=0.05)
    async with StreamingReply(responder, typing_delay=0.5) as answer:
        answer.feed("quick")
        await answer.finish()
    assert [(c.kind, c.final) for c in responder.calls] == [("send", True)]  # one call


async def test_a_slow_answer_shows_typing_after_the_delay_then_the_text():
    responder = RecordingResponder()
    async with StreamingReply(responder, typing_delay=0.05) as answer:
        await wait_for(lambda: bool(responder.calls), timeout=2)
        answer.feed("slow")
        await answer.finish()
    assert [c.kind for c in responder.calls][:2] == ["typing", "send"]


class GatedSends(RecordingResponder):
    """Sends wait for `gate`: a first text still on its way to the platform."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, text: str, *, final: bool) -> MessageRef:
        await self.gate.wait()
        return await super().send(text, final=final)


async def test_no_typing_signal_once_the_first_text_is_on_its_way():
    """Slack's placeholder must never be posted after (or beside) the answer's first text."""
    responder = GatedSends()
    async with StreamingReply(responder, typing_delay=0.05) as answer:
        answer.feed("first")
        await asyncio.sleep(0.15)  # an absence: the delay has to pass while the send waits
        responder.gate.set()
        await answer.finish()
    assert "typing" not in [c.kind for c in responder.calls]


async def test_stop_ends_a_pending_typing_signal_before_a_separate_reply():
    responder = RecordingResponder()
    async with StreamingReply(responder, typing_delay=0.05) as answer:
        await answer.stop()
        await reply(responder, "sorry")
        await asyncio.sleep(0.15)  # an absence: the delay has to pass
    assert [c.kind for c in responder.calls] == ["send"]


async def test_a_renewing_typing_signal_shows_while_a_quick_starting_answer_streams():
    """Telegram and Discord renew "typing…": a long answer that started within the delay
    still shows it while it streams (but never before its first text)."""
    responder = RecordingResponder(typing_interval=0.05, edit_interval=10.0)
    async with StreamingReply(responder, typing_delay=0.2) as answer:
        answer.feed("first words")
        await wait_for(lambda: any(c.kind == "typing" for c in responder.calls), timeout=2)
        answer.feed(" and the rest")
        await answer.finish()
    kinds = [c.kind for c in responder.calls]
    assert kinds[0] == "send" and kinds[-1] == "edit"


async def test_cancelling_the_turn_is_not_swallowed_while_it_stops_its_tasks():
    class SlowTyping(RecordingResponder):
        async def typing(self) -> None:
            await asyncio.sleep(10)

    responder = SlowTyping()
    stopping = asyncio.Event()

    async def turn() -> None:
        async with StreamingReply(responder) as answer:
            await asyncio.sleep(0)  # the typing call is under way
            stopping.set()
            await answer.stop()  # waits for the typing call

    task = asyncio.create_task(turn())
    await stopping.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_text_fed_in_the_iteration_the_typing_delay_falls_due_gets_no_typing_after_it():
    """The reader's step is already queued when the delay falls due (a busy loop): it feeds,
    the timer finds no text on its way yet, and the flusher's send runs before the typing
    task's first step. Slack would post its "thinking…" placeholder beside the answer."""
    responder = RecordingResponder()  # typing_interval 0: one signal, never renewed
    loop = asyncio.get_running_loop()
    async with StreamingReply(responder, typing_delay=0.05) as answer:
        time.sleep(0.1)  # noqa: ASYNC251 - the loop is busy past the delay
        loop.call_soon(answer.feed, "first")  # runs before the timer in the next iteration
        for _ in range(5):
            await asyncio.sleep(0)
        await answer.finish()
    kinds = [c.kind for c in responder.calls]
    assert kinds[0] == "send", kinds
    assert "typing" not in kinds, kinds
