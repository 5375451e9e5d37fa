"""Configured intents: matched before the model, answered by a template, an HTTP action or a
plugin; the classic weather question reaches a local action server with its entity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bots.cli import main
from core.routing.intents import SORRY
from tests.fakes.action_server import FakeActions
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory

WEATHER = r"\bwhat(?:'s| is) the weather in (?P<city>[^?!.,]+)"


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


@pytest.fixture
async def actions() -> AsyncIterator[FakeActions]:
    async with FakeActions() as server:
        yield server


def intent_settings(actions: FakeActions, path: str = "/weather", **extra: Any) -> dict:
    return {
        "actions": {"weather": {"url": actions.url(path), "timeout": 0.5}},
        "intents": [
            {"name": "weather", "patterns": [WEATHER], "action": "weather", **extra},
            {
                "name": "who",
                "patterns": [r"^who are you\??$"],
                "template": "I'm a bot, {user}. {missing}Ask away.",
            },
        ],
    }


async def test_weather_entity_reaches_the_action_and_its_answer_is_the_reply(
    build: CoreFactory, actions: FakeActions, fake_openai: FakeOpenAI
):
    core = await build(**intent_settings(actions))
    responder = RecordingResponder()
    await core.handler(user_message("What’s the weather in Paris?", user="u7"), responder)

    assert responder.texts == ["It is sunny and 21 °C in Paris."]
    [body] = actions.bodies("/weather")
    assert body["intent"] == "weather"
    assert body["entities"] == {"city": "Paris"}
    assert body["text"] == "What's the weather in Paris?"
    assert body["user"] == {"id": "u7", "name": "user u7", "platform": "console"}
    assert body["conversation"] == "console:-:c1:-:-"
    assert fake_openai.chat_requests() == []  # a matched intent skips the model

    # the exchange is in the history, so the model knows about it later
    await core.handler(user_message("and tomorrow?"), RecordingResponder())
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages[1:]]
    assert sent == [
        "What’s the weather in Paris?",
        "It is sunny and 21 °C in Paris.",
        "and tomorrow?",
    ]


async def test_template_intent_fills_entities_and_user(build: CoreFactory, actions: FakeActions):
    core = await build(**intent_settings(actions))
    responder = RecordingResponder()
    await core.handler(user_message("who are you?"), responder)
    assert responder.texts == ["I'm a bot, user u1. Ask away."]


@pytest.mark.parametrize("path", ["/fail", "/slow", "/garbage"])
async def test_failing_action_gets_a_polite_reply(
    build: CoreFactory, actions: FakeActions, fake_openai: FakeOpenAI, path: str
):
    core = await build(**intent_settings(actions, path))
    responder = RecordingResponder()
    loop_time = asyncio.get_running_loop().time
    started = loop_time()
    await core.handler(user_message("what is the weather in Oslo"), responder)
    assert responder.texts == [SORRY]
    assert loop_time() - started < 2  # the 0.5 s timeout holds
    assert len(actions.bodies(path)) == 1
    assert fake_openai.chat_requests() == []


async def test_cached_intent_calls_the_action_once(build: CoreFactory, actions: FakeActions):
    core = await build(cache={"enabled": True}, **intent_settings(actions, cache=True))
    first, second = RecordingResponder(), RecordingResponder()
    await core.handler(user_message("What's the weather in Rome?", channel="a"), first)
    await core.handler(user_message("what's the weather in rome", channel="b"), second)
    assert first.texts == second.texts == ["It is sunny and 21 °C in Rome."]
    assert len(actions.bodies("/weather")) == 1


async def test_failed_action_answers_are_not_cached(build: CoreFactory, actions: FakeActions):
    core = await build(cache={"enabled": True}, **intent_settings(actions, "/fail", cache=True))
    for _ in range(2):
        await core.handler(user_message("what's the weather in Rome"), RecordingResponder())
    assert len(actions.bodies("/fail")) == 2


async def test_commands_win_over_intents(build: CoreFactory, actions: FakeActions):
    core = await build(**intent_settings(actions))
    responder = RecordingResponder()
    await core.handler(user_message("/ask what is the weather in Lima"), responder)
    assert responder.texts == ["It is sunny and 21 °C in Lima."]  # /ask unwraps to the text
    assert core.router.resolve(user_message("/help"))[0] == "help"
    assert core.router.resolve(user_message("what is the weather in Lima"))[0] == "intent:weather"


def test_cli_intents_test_with_the_shipped_config(capsys: pytest.CaptureFixture[str]):
    shipped = Path(__file__).parents[2] / "config.yaml"
    question = "What's the weather in New York today?"
    code = main(["intents", "test", question, "--config", str(shipped)])
    out = capsys.readouterr().out
    assert code == 0
    assert "intent: weather" in out
    assert "city='New York'" in out
    assert "HTTP action weather" in out

    assert main(["intents", "test", "tell me a joke", "--config", str(shipped)]) == 1
    assert "no intent" in capsys.readouterr().out
