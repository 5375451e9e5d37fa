"""A conversation through the whole core: route, remember, stream, save."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from bots.assembly import Core
from core.conversation.chat import APOLOGY
from core.model import Turn
from core.storage import TurnWrites
from stores.redis.store import RedisStore
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message


async def test_answer_streams_and_history_is_remembered(core: Core, fake_openai: FakeOpenAI):
    first = RecordingResponder()
    await core.handler(user_message("hello there"), first)
    assert first.texts == ["echo: hello there"]
    assert first.calls[-1].final

    second = RecordingResponder()
    await core.handler(user_message("and again"), second)
    sent = fake_openai.chat_requests()[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are a test bot."
    assert [m["content"] for m in sent[1:]] == ["hello there", "echo: hello there", "and again"]


async def test_conversations_are_isolated(core: Core, fake_openai: FakeOpenAI):
    await core.handler(user_message("I am in c1", channel="c1"), RecordingResponder())
    await core.handler(user_message("I am in c2", channel="c2"), RecordingResponder())
    sent = fake_openai.chat_requests()[-1].messages
    assert [m["content"] for m in sent if m["role"] != "system"] == ["I am in c2"]


async def test_fifty_concurrent_messages_answered_in_order(core: Core, fake_openai: FakeOpenAI):
    responders = [RecordingResponder() for _ in range(50)]
    await asyncio.gather(
        *(core.handler(user_message(f"msg {i}"), responders[i]) for i in range(50))
    )
    for i, responder in enumerate(responders):
        assert responder.shown == f"echo: msg {i}"
    conversation = await core.store.load(core.chat.conversation_key(user_message("x")))
    contents = [turn.content for turn in conversation.history]
    expected = [text for i in range(50) for text in (f"msg {i}", f"echo: msg {i}")]
    assert contents == expected[-40:]  # bounded by max_turns, in arrival order
    # each request saw exactly the history before it: the locks serialised the turns
    for i, request in enumerate(fake_openai.chat_requests()):
        assert request.messages[-1]["content"] == f"msg {i}"


async def test_history_survives_a_new_core(core: Core, settings, secrets, redis, fake_openai):
    from contextlib import AsyncExitStack

    from bots.assembly import build_core

    await core.handler(user_message("remember the word apricot"), RecordingResponder())
    async with AsyncExitStack() as stack:
        restarted = await build_core(stack, settings, secrets, redis=redis)
        await restarted.handler(user_message("what was the word?"), RecordingResponder())
    sent = fake_openai.chat_requests()[-1].messages
    assert "remember the word apricot" in [m["content"] for m in sent]


async def test_rate_limited_then_success(core: Core, fake_openai: FakeOpenAI):
    fake_openai.push(Reply("error", status=429, retry_after=0.05), Reply(text="finally"))
    responder = RecordingResponder()
    await core.handler(user_message("hi"), responder)
    assert responder.shown == "finally"
    assert len(fake_openai.chat_requests()) == 2


async def test_model_failing_every_time_apologises_and_keeps_serving(
    core: Core, fake_openai: FakeOpenAI, redis
):
    fake_openai.push(*[Reply("error", status=500, retry_after=0.01)] * 3)
    responder = RecordingResponder()
    await core.handler(user_message("are you there?"), responder)
    assert responder.texts == [APOLOGY]
    assert len(fake_openai.chat_requests()) == 3  # one call and two retries

    later = RecordingResponder()
    await core.handler(user_message("second try"), later)
    assert later.shown == "echo: second try"
    sent = fake_openai.chat_requests()[-1].messages
    # the failed message stayed in the history; no apology was recorded as an answer
    assert [m["content"] for m in sent[1:]] == ["are you there?", "second try"]


async def test_stalled_stream_apologises_within_the_timeout(core: Core, fake_openai: FakeOpenAI):
    fake_openai.push(Reply("stall", after_chunks=0))
    responder = RecordingResponder()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.handler(user_message("hello?"), responder)
    assert loop.time() - started < core.settings.llm.chunk_timeout + 1.5
    assert responder.texts == [APOLOGY]


async def test_a_stream_kept_alive_by_comments_alone_still_times_out(
    core: Core, fake_openai: FakeOpenAI
):
    """SSE comments keep the connection's reads alive, so the transport's read timeout never
    fires; the bot's own timeout counts events, not bytes."""
    fake_openai.push(Reply("stall", text="partial answer", after_chunks=1, keepalive=0.2))
    responder = RecordingResponder()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.handler(user_message("hello?"), responder)
    assert loop.time() - started < core.settings.llm.chunk_timeout + 1.5
    assert responder.shown.startswith("partial")
    assert "cut short" in responder.shown


async def test_stream_cut_midway_keeps_partial_answer_with_a_note(
    core: Core, fake_openai: FakeOpenAI
):
    fake_openai.push(Reply("cut", text="one two three four", after_chunks=2))
    responder = RecordingResponder()
    await core.handler(user_message("count"), responder)
    assert responder.shown.startswith("one two")
    assert "cut short" in responder.shown
    conversation = await core.store.load(core.chat.conversation_key(user_message("x")))
    assert conversation.history[-1].content == responder.shown  # exactly what was shown


async def test_an_error_event_mid_stream_keeps_partial_answer_with_a_note(
    core: Core, fake_openai: FakeOpenAI
):
    fake_openai.push(Reply("stream_error", text="one two three four", after_chunks=2))
    responder = RecordingResponder()
    await core.handler(user_message("count"), responder)
    assert responder.shown.startswith("one two") and "three" not in responder.shown
    assert "cut short" in responder.shown
    conversation = await core.store.load(core.chat.conversation_key(user_message("x")))
    assert conversation.history[-1].content == responder.shown


async def test_commands_reset_persona_model_and_unknown(core: Core, fake_openai: FakeOpenAI):
    await core.handler(user_message("first"), RecordingResponder())
    reset = RecordingResponder()
    await core.handler(user_message("/reset"), reset)
    assert "forgotten" in reset.shown
    persona = RecordingResponder()
    await core.handler(user_message("/persona pirate"), persona)
    assert "pirate" in persona.shown
    model = RecordingResponder()
    await core.handler(user_message("/model gpt-other"), model)
    bad_model = RecordingResponder()
    await core.handler(user_message("/model gpt-9000"), bad_model)
    assert "not an allowed model" in bad_model.shown
    unknown = RecordingResponder()
    await core.handler(user_message("/dance"), unknown)
    assert "/help" in unknown.shown
    assert len(fake_openai.chat_requests()) == 1  # commands never reach the model

    await core.handler(user_message("/ask after reset"), RecordingResponder())
    request = fake_openai.chat_requests()[-1]
    assert request.body["model"] == "gpt-other"
    assert request.messages[0]["content"] == "You are a pirate."
    assert [m["content"] for m in request.messages[1:]] == ["after reset"]


async def test_history_is_trimmed_to_the_token_budget(core: Core, fake_openai: FakeOpenAI, redis):
    key = core.chat.conversation_key(user_message("x"))
    from core.model import Turn

    long_turns = [Turn("user" if i % 2 == 0 else "assistant", "word " * 400) for i in range(20)]
    await core.store.write_turn(TurnWrites(key, tuple(long_turns)))
    await core.handler(user_message("short question"), RecordingResponder())
    sent = fake_openai.chat_requests()[-1].messages
    total = sum(len(json.dumps(m)) for m in sent) // 4
    assert total <= core.settings.context.token_budget
    assert sent[-1]["content"] == "short question"
    assert 2 <= len(sent) < 22
    assert sent[1]["role"] == "user"  # never starts with an orphaned answer


async def test_empty_and_whitespace_messages_get_a_prompt_not_the_model(
    core: Core, fake_openai: FakeOpenAI
):
    for text in ("", "   \n\t ", "\x00\x01"):
        responder = RecordingResponder()
        await core.handler(user_message(text), responder)
        assert "How can I help?" in responder.shown
    assert fake_openai.chat_requests() == []


async def test_a_saved_turn_keeps_its_ttls_and_counts_usage_everywhere(
    core: Core, fake_openai: FakeOpenAI, settings, redis
):
    """The save is one MULTI: the history's append, bound and idle TTLs, and the usage
    counters of the conversation and of the user's day and month, each with its TTL."""
    from core.storage import DAY_TTL, MONTH_TTL

    fake_openai.push(Reply(usage={"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}))
    message = user_message("count me")
    await core.handler(message, RecordingResponder())
    key = core.chat.conversation_key(message)
    keys = core.store.keys
    history = keys.history(key)
    assert await redis.lrange(history, 0, -1) != []
    ttl = settings.context.ttl_seconds
    assert ttl - 5 < await redis.ttl(history) <= ttl
    day, month = core.chat.features.usage.periods(core.chat.features.usage.now())
    for usage_key, key_ttl in (
        (keys.user_usage("console", message.user.id, day), DAY_TTL),
        (keys.user_usage("console", message.user.id, month), MONTH_TTL),
        (keys.usage(key), ttl),
    ):
        counters = await redis.hgetall(usage_key)
        counters.pop(b"written", None)  # the write's token (the conversation's hash)
        assert counters == {b"prompt": b"7", b"completion": b"5", b"total": b"12"}
        assert key_ttl - 5 < await redis.ttl(usage_key) <= key_ttl


async def test_the_save_script_appends_more_turns_than_lua_can_unpack_at_once(core: Core, redis):
    key = core.chat.conversation_key(user_message("bulk"))
    turns = [Turn("user", f"t{i}") for i in range(9000)]  # Lua's unpack() stops near 8000
    store = RedisStore(redis, core.store.keys, replace(core.store.limits, max_turns=10_000))
    await store.write_turn(TurnWrites(key, tuple(turns)))
    stored = await redis.lrange(core.store.keys.history(key), 0, -1)
    assert len(stored) == 9000 and b"t8999" in stored[-1]
