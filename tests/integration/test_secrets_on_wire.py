"""No credential leaves the bot except where its protocol puts it.

`test_secrets.py` checks the log output of the core alone; this runs the whole bot on Slack,
Telegram and Discord over their fakes (failing and cut model answers and platform errors
included, so error paths run) and then looks for every secret value in every request body
the fakes received, every log record (before and after the production redaction filter)
and every text shown to users. Credentials legitimately travel in Authorization headers, in
Telegram's URL path (/bot<token>/), in Discord's gateway IDENTIFY and, for the webhook
secret, in Telegram's setWebhook call, so those places are not searched (the last is
checked to hold the secret, which shows the search would see it).
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.logs import RedactSecrets
from core.conversation.chat import APOLOGY
from tests.conftest import make_settings
from tests.drive import (
    TELEGRAM_SECRET,
    TELEGRAM_TOKEN,
    Bot,
    Driver,
    drive_settings_overrides,
    running_bot,
)
from tests.fakes import discord as fd
from tests.fakes import slack as fs
from tests.fakes.openai_server import FakeOpenAI, Reply, echo_answer
from tests.helpers import wait_for

OPENAI_KEY = "sk-live-ONWIRE-0123456789abcdef"
SECRETS = {
    "openai api key": OPENAI_KEY,
    "slack bot token": fs.BOT_TOKEN,
    "slack signing secret": fs.SIGNING_SECRET,
    "telegram bot token": TELEGRAM_TOKEN,
    "telegram webhook secret": TELEGRAM_SECRET,
    "discord bot token": fd.TOKEN,
}
OUR_LOGGERS = ("core", "adapters", "bots")


def _leaks(text: str) -> list[str]:
    """The names of the secrets that occur in `text`."""
    return [name for name, value in SECRETS.items() if value in text]


def _faulty_model(body: dict[str, Any]) -> Reply:
    """Fails or cuts the answer when the user asks for it, so the error paths run."""
    answer = echo_answer(body)
    if "please fail" in answer:
        return Reply("error", status=500, retry_after=0.01)
    if "please cut" in answer:
        return Reply("cut", text=answer + " and then some more words", after_chunks=1)
    return Reply(words_per_chunk=2)


def _record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write for a record: message, traceback and stack."""
    parts = [record.getMessage()]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def _request_bodies(bot: Bot) -> list[tuple[str, str]]:
    """(where, body as JSON) of every request any fake received, minus the one body that
    must carry a secret (Telegram's setWebhook `secret_token`)."""
    bodies: list[tuple[str, str]] = []
    for request in bot.openai.requests:
        bodies.append((f"openai {request.path}", json.dumps(request.body)))
    for call in bot.slack.calls:
        bodies.append((f"slack {call.method}", json.dumps(call.params)))
    for call in bot.telegram.calls:
        params = dict(call.params)
        if call.method == "setWebhook":
            assert params.pop("secret_token") == TELEGRAM_SECRET
        bodies.append((f"telegram {call.method}", json.dumps(params)))
    for call in bot.discord.calls:
        bodies.append((f"discord {call.method} {call.path}",
                       json.dumps([call.body, call.query])))  # fmt: skip
    return bodies


@pytest.mark.timeout(120)
async def test_no_secret_in_bodies_logs_or_user_texts(
    redis: Redis,
    key_prefix: str,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)  # how the key reaches Secrets in production
    caplog.set_level(logging.DEBUG)
    for sdk in ("httpx", "openai", "slack_sdk", "slack_bolt", "telegram", "discord", "aiohttp"):
        monkeypatch.setattr(logging.getLogger(sdk), "level", logging.DEBUG)
    fake_openai.decide = _faulty_model
    settings = make_settings(
        key_prefix, tmp_path, platforms=drive_settings_overrides(), llm={"max_retries": 1}
    )
    turns = ("hello there", "please fail now", "please cut this", "and again")
    async with running_bot(settings, redis, fake_openai) as bot:
        await wait_for(bot.discord.identified.is_set)
        # platform errors on the way out too
        bot.slack.fail("chat.postMessage", error="internal_error", status=500)
        bot.telegram.flood("editMessageText", retry_after=1)
        bot.discord.fail("POST /channels", 502)
        for platform, driver in bot.drivers.items():
            for turn, text in enumerate(turns):
                await driver.say(1, f"{platform} {text}")

                def answered(turn: int = turn, driver: Driver = driver) -> bool:
                    answers = driver.answers(1)
                    return len(answers) > turn and bool(answers[turn].strip())

                await wait_for(answered, timeout=30, every=0.02)
        await wait_for(lambda: bot.app.core is not None and bot.app.core.inflight.running == 0)
        shown = {name: driver.answers(1) for name, driver in bot.drivers.items()}
        bodies = _request_bodies(bot)
        configured = bot.app.secrets.values()

    # the run really exercised the paths that could leak
    chat = fake_openai.chat_requests()
    assert chat and all(r.headers["Authorization"] == f"Bearer {OPENAI_KEY}" for r in chat)
    assert all(APOLOGY in answers for answers in shown.values()), shown
    assert all(any("cut short" in a for a in answers) for answers in shown.values()), shown
    assert {w.split()[0] for w, _ in bodies} == {"openai", "slack", "telegram", "discord"}
    assert caplog.records
    assert sorted(configured) == sorted(SECRETS.values())  # the production redaction list
    redact = RedactSecrets(configured)

    for where, body in bodies:
        assert not _leaks(body), (where, _leaks(body), body)
    for platform, answers in shown.items():
        for answer in answers:
            assert not _leaks(answer), (platform, answer)
    for record in caplog.records:
        raw = _record_text(record)
        if record.name.split(".")[0] in OUR_LOGGERS:  # we never hand a secret to a logger
            assert not _leaks(raw), (record.name, raw)
        # and whatever an SDK logs (a URL with the Telegram token) is masked on the way out
        copy = logging.makeLogRecord(record.__dict__)
        redact.filter(copy)
        assert not _leaks(_record_text(copy)), (record.name, _record_text(copy))
