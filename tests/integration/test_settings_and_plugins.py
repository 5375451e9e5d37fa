"""Per-conversation settings and channel defaults, /help, plugins (the example one and a
broken one), and the Redis round trips one chat turn makes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from bots.assembly import build_core
from bots.cli import main
from core.config import ConfigError
from core.model import User
from core.plugins import PluginError
from tests.conftest import make_settings
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory
from tests.integration.test_round_trips import HANDSHAKE, counting

DICE = "bots.plugins.dice"


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


async def test_admin_sets_the_channel_default_persona(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(platforms={"console": {"scope": "user_in_channel", "admins": ["boss"]}})
    denied = RecordingResponder()
    await core.handler(user_message("/persona default pirate", user="pleb"), denied)
    assert denied.texts == ["Only admins can set this channel's default persona."]

    await core.handler(user_message("/persona default", user="own"), RecordingResponder())
    ok = RecordingResponder()
    await core.handler(user_message("/persona default pirate", user="boss"), ok)
    assert "default persona is now *pirate*" in ok.shown

    await core.handler(user_message("ahoy?", user="pleb"), RecordingResponder())
    assert fake_openai.chat_requests()[-1].messages[0]["content"] == "You are a pirate."
    await core.handler(user_message("hello?", user="own"), RecordingResponder())
    # "own" chose the persona named "default" for their conversation: it wins
    assert fake_openai.chat_requests()[-1].messages[0]["content"] == "You are a test bot."
    await core.handler(
        user_message("ahoy?", user="pleb", channel="elsewhere"), RecordingResponder()
    )
    assert fake_openai.chat_requests()[-1].messages[0]["content"] == "You are a test bot."

    shown = RecordingResponder()
    await core.handler(user_message("/persona", user="pleb"), shown)
    assert shown.shown.startswith("Persona: *pirate*")


async def test_admin_flag_from_the_adapter_sets_the_channel_model(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build()
    message = user_message("/model default gpt-other")
    admin = replace(message, user=User("u1", "Boss", is_admin=True))
    await core.handler(admin, RecordingResponder())
    await core.handler(user_message("hi"), RecordingResponder())
    assert fake_openai.chat_requests()[-1].body["model"] == "gpt-other"


async def test_help_lists_commands_intents_tools_and_plugin_commands(build: CoreFactory):
    core = await build(
        plugins=[DICE],
        tools={"enabled": ["calculator", "roll_dice"]},
        intents=[{"name": "opening_hours", "keywords": ["opening hours"], "template": "9-5"}],
        platforms={"console": {"admins": ["boss"]}},
    )
    user_help = RecordingResponder()
    await core.handler(user_message("/help"), user_help)
    text = user_help.shown
    for expected in (
        "`/usage`",
        "`/roll`",
        "opening hours",
        "flip a coin",
        "calculator, roll_dice",
    ):
        assert expected in text
    assert "default <name>" not in text
    admin_help = RecordingResponder()
    await core.handler(user_message("/help", user="boss"), admin_help)
    assert "`/persona default <name>`" in admin_help.shown


async def test_example_plugin_command_intent_and_tool(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(plugins=[DICE], tools={"enabled": ["roll_dice"]})
    rolled = RecordingResponder()
    await core.handler(user_message("/roll 3d6"), rolled)
    assert rolled.shown.startswith("🎲 3d6: ")
    total = int(rolled.shown.rsplit("*", 2)[-2])
    assert 3 <= total <= 18
    bad = RecordingResponder()
    await core.handler(user_message("/roll lots"), bad)
    assert "Tell me what to roll" in bad.shown

    coin = RecordingResponder()
    await core.handler(user_message("Heads or tails?"), coin)
    assert coin.shown in ("🪙 Heads!", "🪙 Tails!")
    assert fake_openai.chat_requests() == []

    fake_openai.push(Reply(tool_calls=[Call("roll_dice", {"sides": 20, "count": 2})]))
    await core.handler(user_message("roll two d20 for me"), RecordingResponder())
    first, second = fake_openai.chat_requests()
    [spec] = first.body["tools"]
    assert spec["function"] == {
        "name": "roll_dice",
        "description": "Roll dice fairly and return every roll and the total.",
        "parameters": {
            "type": "object",
            "properties": {
                "sides": {"type": "integer", "description": "sides of each die", "default": 6},
                "count": {"type": "integer", "description": "how many dice", "default": 1},
            },
            "required": [],
        },
    }
    result = json.loads(second.messages[-1]["content"])
    assert len(result["rolls"]) == 2 and all(1 <= r <= 20 for r in result["rolls"])
    assert result["total"] == sum(result["rolls"])


async def test_a_plugin_that_fails_to_import_stops_the_start_clearly(
    key_prefix, tmp_path, secrets, redis, capsys: pytest.CaptureFixture[str]
):
    settings = make_settings(key_prefix, tmp_path, plugins=["tests.integration.broken_plugin"])
    async with AsyncExitStack() as stack:
        with pytest.raises(PluginError) as failed:
            await build_core(stack, settings, secrets, redis=redis)
    assert str(failed.value) == (
        "plugin 'tests.integration.broken_plugin' failed to import: ModuleNotFoundError: "
        "No module named 'this_module_does_not_exist'"
    )

    config = tmp_path / "broken.yaml"
    config.write_text("plugins: [tests.integration.broken_plugin]\n")
    assert main(["intents", "test", "hi", "--config", str(config)]) == 2
    assert "plugin error: plugin 'tests.integration.broken_plugin' failed to import" in (
        capsys.readouterr().err
    )


async def test_unknown_tool_name_is_a_config_error(key_prefix, tmp_path, secrets, redis):
    settings = make_settings(key_prefix, tmp_path, tools={"enabled": ["roll_dice"]})
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="unknown tool 'roll_dice'"):
            await build_core(stack, settings, secrets, redis=redis)


async def test_a_chat_turn_with_every_feature_is_two_round_trips(
    build: CoreFactory, fake_openai: FakeOpenAI, standalone_redis_url: str
):
    """Counted on the wire (every write of the client), as tests/integration/test_round_trips."""
    base = UnixDomainSocketConnection if standalone_redis_url.startswith("unix") else Connection
    connection_class = counting(base)
    client = Redis.from_url(standalone_redis_url, connection_class=connection_class)
    build.stack.push_async_callback(client.aclose)
    build.redis = client
    core = await build(
        limits={"messages_per_minute": 60, "daily_tokens": 10_000},
        cache={"enabled": True},
        moderation={"enabled": True},
        tools={"enabled": ["calculator"]},
        platforms={"console": {"scope": "user_in_channel"}},
    )
    fake_openai.push(Reply(tool_calls=[Call("calculator", {"expression": "2+2"})]))
    for text in ("first turn, with a tool", "second turn", "third turn"):
        connection_class.writes.clear()
        before = build.round_trips
        responder = RecordingResponder()
        await core.handler(user_message(text), responder)
        assert responder.shown.startswith(("tools said", "echo"))
        data = [w for w in connection_class.writes if not any(h in w[:40] for h in HANDSHAKE)]
        assert len(data) == 2, data  # the conversation lock rides in both
        read, write = data
        for part in (b":lock", b"LRANGE", b"HGETALL", b":chan:", b"EVAL", b":rate:", b":usage:"):
            assert part in read
        assert b":cache:" in read
        for part in (b"MULTI", b"RPUSH", b"HINCRBY", b":usage:", b":lock"):
            assert part in write
        assert build.round_trips - before == 2  # the store's own count agrees
