"""`privacy.mask`: sensitive values become stable placeholders before the text reaches the
model, the moderation endpoint, the history, the cache and the logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from bots.assembly import build_core
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory

PRIVACY = {"mask": ["email", "phone", "card", "iban", "secret"]}
SECRET = "sk-proj-" + "abc123def456ghi789jkl" * 2  # the length of a real key


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


def _user_texts(fake: FakeOpenAI) -> list[str]:
    return [
        next(m["content"] for m in reversed(r.messages) if m["role"] == "user")
        for r in fake.chat_requests()
    ]


async def test_masked_values_never_reach_the_model_and_keep_their_placeholders(
    build: CoreFactory, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
):
    core = await build(privacy=PRIVACY, moderation={"enabled": True}, input={"log_user_text": True})
    caplog.set_level(logging.INFO)
    first = "mail ann@example.com, card 4111 1111 1111 1111, call +49 30 901820"
    await core.handler(user_message(first), RecordingResponder())
    second = "again ANN@example.com and bob@example.org; 4111 1111 1111 1112 is not a card"
    await core.handler(user_message(second), RecordingResponder())

    sent = _user_texts(fake_openai)
    assert sent[0] == "mail <EMAIL_1>, card <CARD_1>, call <PHONE_1>"
    assert sent[1] == (
        "again <EMAIL_1> and <EMAIL_2>; 4111 1111 1111 1112 is not a card"  # Luhn fails
    )
    history = (await core.store.load(core.chat.conversation_key(user_message("x")))).history
    stored = " ".join(turn.content for turn in history)
    for raw in ("ann@example.com", "bob@example.org", "4111 1111 1111 1111", "901820"):
        assert raw not in stored
        assert all(raw not in str(r.body) for r in fake_openai.requests)  # moderation too
        assert raw not in caplog.text
    assert fake_openai.moderation_requests()  # it was asked, with masked text


async def test_reset_forgets_the_placeholders_with_the_history(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(privacy=PRIVACY)
    await core.handler(user_message("a@example.com b@example.com"), RecordingResponder())
    await core.handler(user_message("/reset"), RecordingResponder())
    await core.handler(user_message("b@example.com"), RecordingResponder())
    assert _user_texts(fake_openai) == ["<EMAIL_1> <EMAIL_2>", "<EMAIL_1>"]


async def test_masking_through_the_memory_store(tmp_path, key_prefix, fake_openai: FakeOpenAI):
    settings = make_settings(key_prefix, tmp_path, privacy=PRIVACY)
    secrets = Secrets(openai_base_url=fake_openai.base_url)
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, in_memory=True)
        for text in (f"x {SECRET}", f"same {SECRET}"):
            await core.handler(user_message(text), RecordingResponder())
    assert _user_texts(fake_openai) == ["x <SECRET_1>", "same <SECRET_1>"]


async def test_masking_off_changes_nothing(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build()
    await core.handler(user_message("ann@example.com"), RecordingResponder())
    assert _user_texts(fake_openai) == ["ann@example.com"]


async def test_profile_data_is_kept_for_privacy_profile_ttl_days(
    build: CoreFactory, fake_openai: FakeOpenAI, redis
):
    """The retention tiers: a user's monthly usage and a channel's defaults live
    `privacy.profile_ttl_days` after their last change; the day's counters three days."""
    core = await build(privacy={"profile_ttl_days": 40})
    message = user_message("count me")
    await core.handler(message, RecordingResponder())
    keys = core.store.keys  # type: ignore[attr-defined]
    assert core.usage is not None
    day, month = core.usage.periods(core.usage.now())
    month_ttl = await redis.ttl(keys.user_usage("console", message.user.id, month))
    assert 40 * 86400 - 60 < month_ttl <= 40 * 86400
    assert await redis.ttl(keys.user_usage("console", message.user.id, day)) > 3 * 86400 - 60
    await core.store.set_channel_setting(message.key, "persona", "pirate")
    assert 40 * 86400 - 60 < await redis.ttl(keys.channel(message.key)) <= 40 * 86400
