"""Slack, end to end: the real slack-bolt app behind our HTTP server, signed events, the fake
Web API (native streaming and the chat.update fallback), Socket Mode, a real Redis and the
fake OpenAI server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis

from adapters.base import AdapterStartError
from bots.app import BotApp
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.slack import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    mention,
    message,
    sign,
)
from tests.helpers import wait_for

CHANNEL = "C0GENERAL"


class SlackBot:
    def __init__(self, app: BotApp, slack: FakeSlack) -> None:
        self.app, self.slack = app, slack

    async def post(self, body: str, headers: dict[str, str], content_type: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.app.port}/slack/events"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url, data=body, headers={**headers, "Content-Type": content_type}
            ) as response,
        ):
            return response.status, await response.text()

    async def event(
        self, event: dict[str, Any], *, event_id: str | None = None, **sign_options: Any
    ) -> int:
        """Slack delivers an event, signed."""
        body = json.dumps(event_body(event, event_id=event_id))
        status, _ = await self.post(body, sign(body, **sign_options), "application/json")
        return status

    async def slash(self, text: str, *, channel: str = CHANNEL) -> tuple[int, str, float]:
        form = {"command": "/ask", "text": text, "user_id": "U0ANN", "user_name": "ann",
                "channel_id": channel, "team_id": "T0TEST", "trigger_id": "tr1",
                "response_url": f"http://127.0.0.1:{self.slack.port}/api/respond",
                "token": "unused"}  # fmt: skip
        body = urlencode(form)
        started = time.monotonic()
        status, text = await self.post(body, sign(body), "application/x-www-form-urlencoded")
        return status, text, time.monotonic() - started


async def _start(slack: FakeSlack, fake_openai: FakeOpenAI, redis: Redis, settings,
                 *, socket: bool = False) -> BotApp:  # fmt: skip
    secrets = Secrets(
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=None if socket else SIGNING_SECRET,
        slack_app_token=APP_TOKEN if socket else None,
        slack_api_url=slack.api_url,
        openai_base_url=fake_openai.base_url,
    )
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    return app


def _settings(key_prefix: str, tmp_path: Path, **slack: Any):
    return make_settings(key_prefix, tmp_path, platforms={"slack": slack})


@pytest.fixture(params=["native", "fallback"])
async def bot(
    request: pytest.FixtureRequest, fake_openai: FakeOpenAI, redis: Redis, key_prefix: str,
    tmp_path: Path,
) -> AsyncIterator[SlackBot]:  # fmt: skip
    async with FakeSlack(streaming=request.param == "native") as slack:
        app = await _start(slack, fake_openai, redis, _settings(key_prefix, tmp_path))
        try:
            yield SlackBot(app, slack)
        finally:
            await app.stop()


async def test_mention_is_answered_in_a_thread_and_the_thread_is_one_conversation(
    bot: SlackBot, fake_openai: FakeOpenAI
):
    first = mention("remember mango", channel=CHANNEL)
    assert await bot.event(first) == 200
    await wait_for(lambda: bot.slack.texts_in(CHANNEL, first["ts"]) == ["echo: remember mango"])
    await bot.event(mention("what fruit?", channel=CHANNEL, thread_ts=first["ts"]))
    await wait_for(lambda: len(bot.slack.texts_in(CHANNEL, first["ts"])) == 2)
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages]
    assert sent[1:] == ["remember mango", "echo: remember mango", "what fruit?"]
    # a new top-level mention is a new conversation
    await bot.event(mention("fresh start", channel=CHANNEL))
    await wait_for(lambda: len(fake_openai.chat_requests()) == 3)
    assert [m["content"] for m in fake_openai.chat_requests()[-1].messages][1:] == ["fresh start"]


async def test_web_api_calls_share_one_kept_alive_connection(bot: SlackBot):
    """slack-sdk opens a new aiohttp session (a new TCP and TLS connection) per call unless
    it is given one; the adapter gives it one for its life."""
    for n in range(3):
        await bot.event(mention(f"question {n}", channel=CHANNEL))
        await wait_for(lambda n=n: len(bot.slack.calls_of("chat.postMessage")) == n + 1)
    peers = {call.peer for call in bot.slack.calls}
    assert len(bot.slack.calls) >= 4 and None not in peers  # auth.test and three answers
    assert len(peers) == 1, peers


async def test_follow_ups_in_an_answered_thread_need_no_mention(
    bot: SlackBot, fake_openai: FakeOpenAI
):
    first = mention("start", channel=CHANNEL)
    await bot.event(first)
    await wait_for(lambda: len(bot.slack.texts_in(CHANNEL, first["ts"])) == 1)
    await bot.event(message("humans talking", channel=CHANNEL, channel_type="channel"))
    await bot.event(message("other thread", channel=CHANNEL, channel_type="channel",
                            thread_ts="1600000000.000001"))  # fmt: skip
    await bot.event(message("and then?", channel=CHANNEL, channel_type="channel",
                            thread_ts=first["ts"]))  # fmt: skip
    await wait_for(lambda: len(bot.slack.texts_in(CHANNEL, first["ts"])) == 2)
    assert len(fake_openai.chat_requests()) == 2  # chatter and foreign threads ignored


async def test_dm_is_answered_in_the_dm(bot: SlackBot):
    await bot.event(message("hi in private", channel="D0ANN"))
    await wait_for(lambda: bot.slack.texts_in("D0ANN") == ["echo: hi in private"])
    assert all(
        c.params.get("thread_ts") in (None, "") for c in bot.slack.calls_of("chat.postMessage")
    )


async def test_slash_command_is_acked_fast_and_answered_in_the_channel(bot: SlackBot):
    status, body, seconds = await bot.slash("what is 2+2?")
    assert status == 200 and body == "" and seconds < 3
    await wait_for(lambda: bot.slack.texts_in(CHANNEL) == ["echo: what is 2+2?"])
    status, _, _ = await bot.slash("reset")
    await wait_for(lambda: any("forgotten" in t for t in bot.slack.texts_in(CHANNEL)))


async def test_forged_and_stale_requests_get_401_and_nothing_happens(
    bot: SlackBot, fake_openai: FakeOpenAI
):
    assert await bot.event(mention("forged"), secret="not-the-secret") == 401
    assert await bot.event(mention("stale"), timestamp=int(time.time()) - 6 * 60) == 401
    status, _ = await bot.post('{"type": "event_callback"}', {}, "application/json")
    assert status == 401
    assert fake_openai.chat_requests() == []
    assert bot.slack.calls_of("chat.postMessage", "chat.startStream") == []


async def test_url_verification_is_answered(bot: SlackBot):
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"})
    status, text = await bot.post(body, sign(body), "application/json")
    assert status == 200 and "abc123" in text


async def test_redelivered_event_is_answered_once(bot: SlackBot, fake_openai: FakeOpenAI):
    event = mention("only once", channel=CHANNEL)
    assert await bot.event(event, event_id="Ev-same") == 200
    assert await bot.event(event, event_id="Ev-same") == 200
    await bot.event(mention("after", channel=CHANNEL))
    await wait_for(lambda: len(fake_openai.chat_requests()) == 2)
    await wait_for(lambda: len(bot.slack.texts_in(CHANNEL)) == 2)
    assert [r.messages[-1]["content"] for r in fake_openai.chat_requests()].count("only once") == 1


async def test_own_and_other_bots_edits_and_joins_are_ignored(
    bot: SlackBot, fake_openai: FakeOpenAI
):
    await bot.event(message("from myself", user=BOT_USER))
    await bot.event(message("from my bot id", bot_id=BOT_ID))
    await bot.event(message("another bot", bot_id="B0OTHER", subtype="bot_message"))
    await bot.event(message("edited", subtype="message_changed"))
    await bot.event(message("joined", subtype="channel_join", channel_type="channel"))
    await bot.event(message("deleted", subtype="message_deleted"))
    await bot.event(message("a human"))
    await wait_for(lambda: len(fake_openai.chat_requests()) == 1)
    await wait_for(lambda: bot.slack.texts_in("D0ANN") == ["echo: a human"])


async def test_tricky_markdown_arrives_as_safe_mrkdwn(bot: SlackBot, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="**bold** <!channel> a < b & c <@U123>"))
    await bot.event(message("format please"))
    safe = "*bold* &lt;!channel&gt; a &lt; b &amp; c &lt;@U123&gt;"
    await wait_for(lambda: bot.slack.texts_in("D0ANN") == [safe])


async def test_long_answer_continues_in_the_same_thread(bot: SlackBot, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(text="\n\n".join(["word " * 150] * 8), words_per_chunk=40))
    first = mention("essay please", channel=CHANNEL)
    await bot.event(first)
    await wait_for(lambda: sum(map(len, bot.slack.texts_in(CHANNEL, first["ts"]))) > 5900)
    parts = bot.slack.texts_in(CHANNEL, first["ts"])
    assert len(parts) >= 2 and all(len(p) <= 4000 for p in parts)


async def test_rate_limited_update_is_retried_and_the_answer_kept(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeSlack(streaming=False) as slack:
        app = await _start(slack, fake_openai, redis, _settings(key_prefix, tmp_path))
        try:
            bot = SlackBot(app, slack)
            slack.fail("chat.update", retry_after=1)
            await bot.event(message("patience"))
            await wait_for(lambda: slack.texts_in("D0ANN") == ["echo: patience"], timeout=10)
            updates = slack.calls_of("chat.update")
            assert len(updates) >= 2 and updates[1].at - updates[0].at >= 0.9
        finally:
            await app.stop()


async def test_native_stream_is_used_in_threads(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    fake_openai.push(Reply(text="one two three four five six seven", tokens_per_second=60))
    async with FakeSlack(streaming=True) as slack:
        app = await _start(slack, fake_openai, redis, _settings(key_prefix, tmp_path))
        try:
            first = mention("stream it", channel=CHANNEL)
            await SlackBot(app, slack).event(first)
            await wait_for(lambda: slack.calls_of("chat.stopStream"))
            start = slack.calls_of("chat.startStream")[0]
            assert start.params["thread_ts"] == first["ts"]
            assert slack.texts_in(CHANNEL, first["ts"]) == ["one two three four five six seven"]
            assert not slack.calls_of("chat.update")
        finally:
            await app.stop()


async def test_assistant_thread_prompts_and_status(bot: SlackBot):
    started = {"type": "assistant_thread_started", "assistant_thread": {
        "user_id": "U0ANN", "context": {}, "channel_id": "D0ANN",
        "thread_ts": "1690000000.999999"}, "event_ts": "1690000000.999999"}  # fmt: skip
    await bot.event(started)
    await wait_for(lambda: bot.slack.calls_of("assistant.threads.setSuggestedPrompts"))
    prompts = bot.slack.calls_of("assistant.threads.setSuggestedPrompts")[0].params["prompts"]
    assert prompts[0]["title"] == "Summarise"
    await bot.event(message("help me", channel="D0ANN", thread_ts="1690000000.999999"))
    await wait_for(lambda: bot.slack.texts_in("D0ANN", "1690000000.999999") == ["echo: help me"])
    status = bot.slack.calls_of("assistant.threads.setStatus")[0]
    assert status.params["status"] == "is thinking…"


async def test_socket_mode_envelopes_are_acked_and_answered(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeSlack(streaming=False) as slack:
        app = await _start(slack, fake_openai, redis, _settings(key_prefix, tmp_path), socket=True)
        try:
            await wait_for(lambda: slack.connected.is_set())
            envelope = await slack.envelope(event_body(message("over the socket")))
            await wait_for(lambda: slack.texts_in("D0ANN") == ["echo: over the socket"])
            assert any(ack.get("envelope_id") == envelope for ack in slack.acks)
        finally:
            await app.stop()


async def test_bad_token_is_a_clear_error(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    async with FakeSlack() as slack:
        secrets = Secrets(
            slack_bot_token="xoxb-wrong",
            slack_signing_secret=SIGNING_SECRET,
            slack_api_url=slack.api_url,
            openai_base_url=fake_openai.base_url,
        )
        app = BotApp(_settings(key_prefix, tmp_path), secrets, redis=redis)
        with pytest.raises(AdapterStartError) as info:
            await app.start()
    assert "SLACK_BOT_TOKEN" in str(info.value) and "xoxb-wrong" not in str(info.value)


async def test_a_placeholder_only_when_the_answer_is_slower_than_the_typing_delay(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    """Fallback mode: a quick answer is one chat.postMessage; a slow one shows the
    placeholder first and replaces it, so no stray "Thinking…" is left either way."""
    settings = make_settings(key_prefix, tmp_path, platforms={"slack": {"native_streaming": False}},
                             streaming={"typing_delay": 0.2})  # fmt: skip
    async with FakeSlack(streaming=False) as slack:
        app = await _start(slack, fake_openai, redis, settings)
        bot = SlackBot(app, slack)
        try:
            await bot.event(mention("quick", channel=CHANNEL))
            await wait_for(lambda: slack.texts_in(CHANNEL) == ["echo: quick"])
            assert [c.method for c in slack.calls_of("chat.postMessage", "chat.update")] == [
                "chat.postMessage"
            ]
            fake_openai.push(Reply(ttft=0.6))
            await bot.event(mention("slow", channel=CHANNEL))
            await wait_for(lambda: slack.texts_in(CHANNEL) == ["echo: quick", "echo: slow"])
            slow = slack.calls_of("chat.postMessage", "chat.update")[1:]
            assert slow[0].method == "chat.postMessage"
            assert slow[0].params["text"] == settings.platforms.slack.thinking
            assert slow[-1].method == "chat.update" and "echo: slow" in slow[-1].params["text"]
        finally:
            await app.stop()


async def test_an_answer_in_flight_at_shutdown_is_delivered_once(
    fake_openai: FakeOpenAI, redis: Redis, key_prefix: str, tmp_path: Path
):
    """Stopping takes no new events but keeps the Web API session until the answers in
    flight are drained: a post under way is not cut (and then sent a second time)."""
    settings = _settings(key_prefix, tmp_path, native_streaming=False)
    async with FakeSlack(streaming=False) as slack:
        app = await _start(slack, fake_openai, redis, settings)
        slack.delays["chat.postMessage"] = 0.5
        await SlackBot(app, slack).event(mention("last words", channel=CHANNEL))
        await wait_for(lambda: bool(slack.calls_of("chat.postMessage")))  # under way
        await app.stop(grace=5)
        assert slack.texts_in(CHANNEL) == ["echo: last words"]
