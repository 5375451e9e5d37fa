"""Function calling: the model asks for tools, the core runs them (in parallel, each with a
timeout), feeds the results back, and streams the final answer; failures become results."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.llm.toolloop import STEP_LIMIT_NOTE
from tests.fakes.action_server import FakeActions
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message
from tests.integration.factory import CoreFactory

PLUGIN = "tests.integration.sample_plugin"
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
async def build(key_prefix, tmp_path, secrets, redis) -> AsyncIterator[CoreFactory]:
    async with CoreFactory.open(key_prefix, tmp_path, secrets, redis) as factory:
        yield factory


@pytest.fixture
async def actions() -> AsyncIterator[FakeActions]:
    async with FakeActions() as server:
        yield server


def tool_results(request_messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> content of the tool messages the model was sent."""
    return {m["tool_call_id"]: m["content"] for m in request_messages if m["role"] == "tool"}


async def test_two_tools_in_one_turn_one_failing(
    build: CoreFactory, actions: FakeActions, fake_openai: FakeOpenAI
):
    core = await build(
        actions={"weather": {"url": actions.url("/fail"), "parameters": CITY_SCHEMA}},
        tools={"enabled": ["calculator", "weather"]},
    )
    fake_openai.push(
        Reply(
            text="Let me check.",
            tool_calls=[
                Call("calculator", {"expression": "6 * 7"}),
                Call("weather", {"city": "Oslo"}),
            ],
        )
    )
    responder = RecordingResponder()
    await core.handler(user_message("what is 6*7, and the weather in Oslo?"), responder)

    first, second = fake_openai.chat_requests()
    offered = [tool["function"]["name"] for tool in first.body["tools"]]
    assert offered == ["calculator", "weather"]
    asked = second.messages[-3]
    assert asked["role"] == "assistant" and asked["content"] == "Let me check."
    ids = [call["id"] for call in asked["tool_calls"]]
    assert [call["function"]["name"] for call in asked["tool_calls"]] == ["calculator", "weather"]
    # the streamed argument fragments were joined back into the JSON the model wrote
    assert json.loads(asked["tool_calls"][1]["function"]["arguments"]) == {"city": "Oslo"}
    results = tool_results(second.messages)
    assert json.loads(results[ids[0]]) == {"expression": "6 * 7", "result": "42"}
    assert json.loads(results[ids[1]]) == {"error": "the action answered HTTP 500"}
    assert actions.bodies("/fail")[0]["entities"] == {"city": "Oslo"}

    assert responder.shown.startswith("Let me check.\n\ntools said: ")
    assert '"result": "42"' in responder.shown
    history = await core.store.load(core.chat.conversation_key(user_message("x")))
    assert history.history[-1].content == responder.shown  # what the user saw


async def test_tool_calls_run_in_parallel_and_time_out(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(plugins=[PLUGIN], tools={"enabled": ["nap"], "timeout": 0.6})
    fake_openai.push(
        Reply(
            tool_calls=[
                Call("nap", {"seconds": 0.3}),
                Call("nap", {"seconds": 0.3}),
                Call("nap", {"seconds": 5}),
            ]
        )
    )
    await core.handler(user_message("nap three times"), RecordingResponder())
    results = list(tool_results(fake_openai.chat_requests()[1].messages).values())
    one, two = json.loads(results[0]), json.loads(results[1])
    assert one["started"] < two["ended"] and two["started"] < one["ended"]  # they overlapped
    assert json.loads(results[2]) == {"error": "the tool did not answer within 0.6 seconds"}


async def test_step_limit_forces_an_answer_in_words(build: CoreFactory, fake_openai: FakeOpenAI):
    core = await build(tools={"enabled": ["calculator"], "max_steps": 2})
    again = Reply(tool_calls=[Call("calculator", {"expression": "1+1"})])
    fake_openai.push(again, again, again)
    responder = RecordingResponder()
    await core.handler(user_message("keep calculating"), responder)

    requests = fake_openai.chat_requests()
    assert len(requests) == 3
    assert [r.body.get("tool_choice") for r in requests] == [None, None, "none"]
    assert len(tool_results(requests[2].messages)) == 2  # two rounds of tools ran
    assert responder.shown.startswith("tools said: ")


async def test_step_limit_note_when_the_server_ignores_tool_choice(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(tools={"enabled": ["calculator"], "max_steps": 1})
    stubborn = Reply(text="Checking.", tool_calls=[Call("calculator", {"expression": "2"})])
    fake_openai.push(
        stubborn, Reply(text="Again.", tool_calls=stubborn.tool_calls, ignore_tool_choice=True)
    )
    responder = RecordingResponder()
    await core.handler(user_message("loop forever"), responder)
    assert responder.shown == "Checking.\n\nAgain." + STEP_LIMIT_NOTE.format(steps=1)


async def test_bad_arguments_unknown_tools_and_exceptions_reach_the_model(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(plugins=[PLUGIN], tools={"enabled": ["explode", "current_time", "whoami"]})
    fake_openai.push(
        Reply(
            tool_calls=[
                Call("explode", {"reason": "kaboom"}),
                Call("current_time", '{"timezone": "Asia/Tok'),  # cut JSON
                Call("current_time", {"timezone": "Mars/Olympus"}),
                Call("current_time", {"timezone": "Asia/Tokyo"}),
                Call("no_such_tool", {}),
                Call("whoami", {}),
            ]
        )
    )
    responder = RecordingResponder()
    await core.handler(user_message("do everything", user="ada"), responder)
    results = [
        json.loads(r) if r.startswith("{") else r
        for r in tool_results(fake_openai.chat_requests()[1].messages).values()
    ]
    assert results[0] == {"error": "the tool failed (RuntimeError)"}
    assert results[1] == {"error": "the arguments are not valid JSON"}
    assert "unknown time zone 'Mars/Olympus'" in results[2]["error"]
    assert results[3]["timezone"] == "Asia/Tokyo" and results[3]["utc_offset"] == "+0900"
    assert results[4] == {"error": "there is no tool named 'no_such_tool'"}
    assert results[5] == "ada in console:-:c1:-:-"
    assert responder.shown.startswith("tools said: ")


async def test_model_failing_after_a_tool_round_keeps_what_was_shown(
    build: CoreFactory, fake_openai: FakeOpenAI
):
    core = await build(tools={"enabled": ["calculator"]})
    fake_openai.push(
        Reply(text="Working on it.", tool_calls=[Call("calculator", {"expression": "1"})]),
        *[Reply("error", status=500, retry_after=0.01)] * 3,
    )
    responder = RecordingResponder()
    await core.handler(user_message("compute"), responder)
    assert responder.shown.startswith("Working on it.")
    assert "cut short" in responder.shown
