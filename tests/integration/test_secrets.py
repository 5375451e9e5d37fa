"""Known secrets never appear in the logs, whatever happens during a conversation."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from bots.assembly import build_core
from bots.logs import RedactSecrets, setup_logging
from core.config import Secrets, Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message

API_KEY = "sk-live-KNOWNSECRET-0123456789"
OTHER = {
    "slack_bot_token": "xoxb-KNOWN-SLACK-TOKEN",
    "slack_signing_secret": "KNOWN-SIGNING-SECRET",
    "telegram_bot_token": "123456:KNOWN-TELEGRAM-TOKEN",
    "discord_bot_token": "KNOWN.DISCORD.TOKEN",
}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    secrets = Secrets(openai_api_key=API_KEY, **OTHER)
    setup_logging("DEBUG", secrets.values(), stream=stream)
    for noisy in ("httpx", "httpx2", "openai"):  # even the SDKs' debug logs pass the filter
        logging.getLogger(noisy).setLevel(logging.DEBUG)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


async def test_no_secret_in_any_log_line(
    log_stream: io.StringIO, settings: Settings, fake_openai: FakeOpenAI, redis: Redis
):
    secrets = Secrets(openai_api_key=API_KEY, openai_base_url=fake_openai.base_url, **OTHER)
    fake_openai.push(
        Reply("error", status=429, retry_after=0.01),
        Reply(text="fine"),
        Reply("error", status=500, retry_after=0.01),
        Reply("error", status=500, retry_after=0.01),
        Reply("error", status=500, retry_after=0.01),
        Reply("cut", text="a b c", after_chunks=1),
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        for text in ("one", "two", "three", "/model nope", f"my token is {API_KEY}"):
            await core.handler(user_message(text), RecordingResponder())
        logging.getLogger("test").error("leak attempt %s", API_KEY)
        try:
            raise RuntimeError(f"failure mentioning {OTHER['slack_bot_token']}")
        except RuntimeError:
            logging.getLogger("test").exception("with traceback")
    output = log_stream.getvalue()
    assert "turn start" in output and "leak attempt ***" in output
    assert fake_openai.chat_requests()[0].headers["Authorization"] == f"Bearer {API_KEY}"
    for secret in [API_KEY, *OTHER.values()]:
        assert secret not in output


def test_redaction_masks_args_and_tracebacks():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", ("abcdef-secret",), None)
    RedactSecrets(["abcdef-secret"]).filter(record)
    assert record.getMessage() == "token=***"


def test_json_log_lines_carry_the_turn_id_and_mask_secrets():
    import json as _json

    from core.conversation.turns import current_turn

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        setup_logging("INFO", [API_KEY], stream=stream, fmt="json")
        token = current_turn.set("abc123")
        logging.getLogger("core.conversation.chat").info("calling the model with %s", API_KEY)
        current_turn.reset(token)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = _json.loads(stream.getvalue().strip())
    assert line["turn"] == "abc123"
    assert line["message"] == "calling the model with ***"
