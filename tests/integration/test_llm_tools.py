"""The model client over the fake OpenAI server: streamed tool calls are assembled from their
fragments (several in one answer), usage is reported, and whole answers carry tool calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from core.config import LLMSettings
from core.llm.openai_chat import OpenAIChat, make_client
from core.model import ToolCall, Turn
from core.protocols import Usage
from tests.fakes.openai_server import Call, FakeOpenAI, Reply

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look up.", "parameters": {"type": "object"}},
}


@pytest.fixture
async def llm(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIChat]:
    settings = LLMSettings(model="gpt-test", chunk_timeout=2, max_retries=0)
    client = make_client(settings, api_key="sk-test", base_url=fake_openai.base_url)
    try:
        yield OpenAIChat(client, settings)
    finally:
        await client.close()


async def test_streamed_tool_calls_are_assembled(llm: OpenAIChat, fake_openai: FakeOpenAI):
    arguments = {"query": 'a fairly long query, with “unicode” and "quotes"', "limit": 3}
    fake_openai.push(
        Reply(
            text="Looking.",
            tool_calls=[Call("lookup", arguments), Call("lookup", {"query": "second"})],
            usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            fragment_chars=3,
        )
    )
    events = [e async for e in llm.stream([Turn("user", "hi")], model="gpt-test", tools=[TOOL])]
    assert events[0] == "Looking."
    assert Usage(11, 7) in events
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["lookup", "lookup"]
    assert calls[0].id != calls[1].id
    assert json.loads(calls[0].arguments) == arguments
    assert json.loads(calls[1].arguments) == {"query": "second"}
    body = fake_openai.chat_requests()[0].body
    assert body["tools"] == [TOOL]
    assert body["stream_options"] == {"include_usage": True}


async def test_tool_results_go_back_on_the_wire(llm: OpenAIChat, fake_openai: FakeOpenAI):
    call = ToolCall("call_9", "lookup", '{"query": "x"}')
    prompt = [
        Turn("user", "hi", name="Zoë Ng"),
        Turn("assistant", "", tool_calls=(call,)),
        Turn("tool", '{"found": 1}', tool_call_id="call_9"),
    ]
    text = "".join(
        [
            e
            async for e in llm.stream(prompt, model="gpt-test", tools=[TOOL], tool_choice="none")
            if isinstance(e, str)
        ]
    )
    assert text == 'tools said: {"found": 1}'
    sent = fake_openai.chat_requests()[0].body
    assert sent["tool_choice"] == "none"
    assert sent["messages"] == [
        {"role": "user", "content": "hi", "name": "Zo__Ng"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"query": "x"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"found": 1}', "tool_call_id": "call_9"},
    ]


async def test_whole_answers_carry_tool_calls_and_usage(llm: OpenAIChat, fake_openai: FakeOpenAI):
    fake_openai.push(Reply(tool_calls=[Call("lookup", {"a": 1}), Call("lookup", {"b": 2})]))
    completion = await llm.complete([Turn("user", "hi")], model="gpt-test", tools=[TOOL])
    assert completion.text == ""
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("lookup", '{"a": 1}'),
        ("lookup", '{"b": 2}'),
    ]
    assert completion.usage is not None and completion.usage.total > 0

    plain = await llm.complete([Turn("user", "summarise")], model="gpt-test", max_tokens=50)
    assert plain.text == "echo: summarise" and plain.tool_calls == ()
    assert fake_openai.chat_requests()[-1].body["max_completion_tokens"] == 50
