"""Junk and forgeries at the webhooks: a 4xx, at most one short log line without the body or a
traceback, and real events still answered afterwards (issue 15, items 1 and 2)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_body, mention, sign
from tests.fakes.telegram import FakeTelegram, text_message
from tests.helpers import wait_for
from tests.integration.test_slack import CHANNEL, SlackBot
from tests.integration.test_slack import _settings as slack_settings
from tests.integration.test_slack import _start as start_slack
from tests.integration.test_telegram import SECRET, TOKEN, TelegramBot
from tests.integration.test_telegram import _settings as telegram_settings
from tests.integration.test_telegram import _start as start_telegram

MARK = "USER-WORDS-9f2c"  # must never reach the log
DEEP = "{" + '"a":{' * 5000 + "}" * 5001
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

Headers = Callable[[bytes], dict[str, str]]


def signed(body: bytes) -> dict[str, str]:
    return sign(body)


def unsigned(body: bytes) -> dict[str, str]:
    return {}


def stale(body: bytes) -> dict[str, str]:
    return sign(body, timestamp=int(time.time()) - 6 * 60)


def bad_timestamp(body: bytes) -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": "12:00 tomorrow", "X-Slack-Signature": "v0=00"}


SLACK_JUNK: dict[str, tuple[bytes, Headers, str]] = {
    "unsigned non-JSON with a forged log line": (
        f"{MARK}\nERROR:root:forged line".encode(), unsigned, "text/plain"),
    "non-numeric timestamp": (b'{"type": "event_callback"}', bad_timestamp, JSON),
    "stale real request": (json.dumps(event_body(mention(MARK))).encode(), stale, JSON),
    "signed JSON list": (f'[{{"text": "{MARK}"}}]'.encode(), signed, JSON),
    "signed JSON string": (f'"{MARK}"'.encode(), signed, JSON),
    "signed JSON null": (b"null", signed, JSON),
    "signed invalid UTF-8": (f'{{"text": "\xff {MARK}"}}'.encode("latin-1"), signed, JSON),
    "signed JSON nested 5,000 deep": (DEEP.encode(), signed, JSON),
    "signed event that is a list": (
        json.dumps({"type": "event_callback", "event": [], "text": MARK}).encode(), signed, JSON),
    "signed form with a payload that is not JSON": (
        f"payload=%7Bnot-json+{MARK}".encode(), signed, FORM),
}  # fmt: skip

TELEGRAM_JUNK: dict[str, bytes] = {
    "a list": f'[{{"update_id": 1, "text": "{MARK}"}}]'.encode(),
    "a string": f'"{MARK}"'.encode(),
    "a number": b"12345",
    "null": b"null",
    "message that is a string": json.dumps({"update_id": 7, "message": MARK}).encode(),
    "message missing its fields": json.dumps({"update_id": 8, "message": {"t": MARK}}).encode(),
    "nested 5,000 deep": DEEP.encode(),
    "not JSON": f"{MARK}\nERROR:root:forged line".encode(),
    "invalid UTF-8": f'{{"update_id": 9, "x": "\xff {MARK}"}}'.encode("latin-1"),
}


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """At most one short line, no traceback, nothing of the request."""
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) <= 1, [r.getMessage()[:200] for r in records]
    for record in records:
        text = record.getMessage()
        assert record.exc_info is None and "\n" not in text and len(text) < 200, text[:300]
        assert MARK not in text


@pytest.fixture
async def slack_bot(
    fake_openai: FakeOpenAI,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[SlackBot]:
    """Logging at INFO before bolt is built: bolt copies the root logger's level then."""
    caplog.set_level(logging.INFO)
    async with FakeSlack(streaming=False) as slack:
        app = await start_slack(slack, fake_openai, redis, slack_settings(key_prefix, tmp_path))
        try:
            yield SlackBot(app, slack)
        finally:
            await app.stop()


@pytest.fixture
async def telegram_bot(
    fake_openai: FakeOpenAI,
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[TelegramBot]:
    caplog.set_level(logging.INFO)
    async with FakeTelegram(TOKEN) as tg:
        settings = telegram_settings(key_prefix, tmp_path)
        app = await start_telegram(tg, fake_openai, redis, settings, webhook=True)
        try:
            yield TelegramBot(app, tg, webhook=True)
        finally:
            await app.stop()


@pytest.mark.parametrize("case", list(SLACK_JUNK))
async def test_slack_junk_is_refused_quietly(
    case: str, slack_bot: SlackBot, caplog: pytest.LogCaptureFixture
):
    body, headers, content_type = SLACK_JUNK[case]
    caplog.clear()
    status, text = await slack_bot.post(body, headers(body), content_type)  # type: ignore[arg-type]
    assert 400 <= status < 500 and MARK not in text
    assert_quiet(caplog)
    assert await slack_bot.event(mention("still here", channel=CHANNEL)) == 200
    await wait_for(lambda: slack_bot.slack.texts_in(CHANNEL) == ["echo: still here"])


async def test_a_flood_of_big_unsigned_requests_logs_one_line(
    slack_bot: SlackBot, caplog: pytest.LogCaptureFixture
):
    body = (MARK + "\n") * (1_000_000 // (len(MARK) + 1))
    caplog.clear()
    for _ in range(50):
        status, _ = await slack_bot.post(body, {}, "text/plain")
        assert status == 401
    assert_quiet(caplog)
    assert await slack_bot.event(mention("after the flood", channel=CHANNEL)) == 200
    await wait_for(lambda: slack_bot.slack.texts_in(CHANNEL) == ["echo: after the flood"])


@pytest.mark.parametrize("case", list(TELEGRAM_JUNK))
async def test_telegram_junk_is_refused_quietly(
    case: str, telegram_bot: TelegramBot, caplog: pytest.LogCaptureFixture
):
    caplog.clear()
    url = f"http://127.0.0.1:{telegram_bot.app.port}/telegram/webhook"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=TELEGRAM_JUNK[case], headers={
            "X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": JSON}) as response,
    ):  # fmt: skip
        assert 400 <= response.status < 500 and MARK not in await response.text()
    assert_quiet(caplog)
    assert await telegram_bot.deliver(text_message("still here", chat_id=42)) == 200
    await wait_for(lambda: telegram_bot.finals(42) == ["echo: still here"])
