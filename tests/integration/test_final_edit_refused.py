"""A platform refuses the final edit of a streamed answer, twice: the whole answer is posted
anew and the stale partial message is deleted, so the user sees one complete answer.

Each platform refuses in a way its SDK does not retry by itself: Slack `ok: false`, Telegram
400 Bad Request, Discord 403 Forbidden.
"""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from tests.conftest import make_settings
from tests.drive import drive_settings_overrides, running_bot
from tests.fakes.openai_server import FakeOpenAI, Reply

PLATFORMS = ("slack", "telegram", "discord")
ANSWER = "one two three four five six"


async def test_refused_final_edit_leaves_one_complete_answer(
    redis: Redis, key_prefix: str, tmp_path: Path, fake_openai: FakeOpenAI
):
    settings = make_settings(
        key_prefix, tmp_path, platforms=drive_settings_overrides(), streaming={"edit_interval": 30}
    )  # only the first text, then final
    for _ in PLATFORMS:  # slow enough that the first words are shown before the end
        fake_openai.push(Reply(text=ANSWER, ttft=0.05, tokens_per_second=20, words_per_chunk=1))
    async with running_bot(settings, redis, fake_openai) as bot:
        refuse = {
            "slack": lambda: bot.slack.fail("chat.update", error="cant_update_message",
                                            status=200),
            "telegram": lambda: bot.telegram.fail("editMessageText", 400,
                                                  "Bad Request: message can't be edited"),
            "discord": lambda: bot.discord.fail("PATCH /channels", 403, message="Missing Access",
                                                code=50001),
        }  # fmt: skip
        for number, platform in enumerate(PLATFORMS):
            await bot.drivers[platform].say(number, f"count on {platform}")
        for number, platform in enumerate(PLATFORMS):
            # once the first words are on screen, the next two edits (the final one and its
            # retry) are refused
            await bot.drivers[platform].wait_answers(
                number, lambda a: bool(a) and a[0].startswith("one"), timeout=10
            )
            refuse[platform]()
            refuse[platform]()
        for number, platform in enumerate(PLATFORMS):
            answers = await bot.drivers[platform].wait_answers(
                number, lambda a: a == [ANSWER], timeout=15
            )
            assert answers == [ANSWER], (platform, answers)
    assert bot.slack.calls_of("chat.delete")
    assert bot.telegram.calls_of("deleteMessage")
    assert bot.discord.calls_to("DELETE", "/messages/")
