"""Plugin functions become tools: their JSON schema comes from their type hints, and the
toolbox turns every failure into a result the model can read."""

from __future__ import annotations

import asyncio
import enum
import json
from typing import Annotated, Literal

import pytest

from core.model import ContextKey, Message, ToolCall, User
from core.tools.toolbox import Toolbox, ToolContext, ToolError, function_tool, json_schema

CONTEXT = ToolContext(Message("console", ContextKey("console", "c"), User("u"), "hi", "1"), "conv")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_schema_from_type_hints():
    async def search(
        query: Annotated[str, "what to look for"],
        limit: int = 5,
        exact: bool = False,
        order: Literal["new", "old"] = "new",
        tags: list[str] | None = None,
        colour: Colour = Colour.RED,
        context: ToolContext | None = None,
    ) -> list[str]:
        """Search the notes.

        More details that the model does not need.
        """
        return []

    tool = function_tool(search)
    assert tool.description == "Search the notes."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "limit": {"type": "integer", "default": 5},
            "exact": {"type": "boolean", "default": False},
            "order": {"enum": ["new", "old"], "type": "string", "default": "new"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "colour": {"enum": ["red", "blue"]},
        },
        "required": ["query"],
    }
    assert tool.spec()["function"]["name"] == "search"


def test_context_parameter_is_not_offered_to_the_model():
    async def who(context: ToolContext, loud: bool = False) -> str:
        """Who asks."""
        return context.message.user.id.upper() if loud else context.message.user.id

    tool = function_tool(who)
    assert list(tool.parameters["properties"]) == ["loud"]
    assert asyncio.run(tool.run({"loud": True}, CONTEXT)) == "U"


def test_unsupported_hints_are_refused_at_registration():
    def bad(when: complex) -> str:
        return ""

    with pytest.raises(TypeError, match="parameter 'when': unsupported type hint"):
        function_tool(bad)
    with pytest.raises(TypeError, match="unsupported"):
        json_schema(set[int])


async def test_toolbox_turns_failures_into_results():
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    async def refuse() -> str:
        """Refuse."""
        raise ToolError("not today")

    box = Toolbox({t.name: t for t in (function_tool(add), function_tool(refuse))}, timeout=1)
    turns = await box.run_all(
        [
            ToolCall("1", "add", '{"a": 2, "b": 3}'),
            ToolCall("2", "add", '{"a": 2}'),
            ToolCall("3", "add", '{"a": 2, "b": 3, "c": 4}'),
            ToolCall("4", "add", "[1, 2]"),
            ToolCall("5", "refuse", ""),
            ToolCall("6", "add", '{"a": 2, "b": "abc"}'),
            ToolCall("7", "add", '{"a": 2, "b": "40"}'),
        ],
        CONTEXT,
    )
    assert [t.tool_call_id for t in turns] == ["1", "2", "3", "4", "5", "6", "7"]
    results = [json.loads(t.content) for t in turns]
    assert results == [
        5,
        {"error": "invalid arguments: b: Field required"},
        {"error": "invalid arguments: c: Extra inputs are not permitted"},
        {"error": "the arguments must be a JSON object"},
        {"error": "not today"},
        # checked against the declared type before the function runs (was a TypeError inside)
        {
            "error": "invalid arguments: b: Input should be a valid integer, unable to parse "
            "string as an integer"
        },
        42,  # a number the model wrote as a string still counts
    ]


async def test_parameters_named_like_model_attributes_work():
    """`json`, `schema`, `copy` and `model_config` are pydantic BaseModel names: as plain
    field names they warn (an error under this suite) or break the argument model."""

    def shadowing(json: str, schema: int = 1, copy: bool = False, model_config: str = "x") -> str:
        """Echo."""
        return f"{json}/{schema}/{copy}/{model_config}"

    box = Toolbox({"shadowing": function_tool(shadowing)}, timeout=1)
    turns = await box.run_all(
        [
            ToolCall("1", "shadowing", '{"json": "j", "schema": 2, "model_config": "m"}'),
            ToolCall("2", "shadowing", '{"schema": "two"}'),
        ],
        CONTEXT,
    )
    assert turns[0].content == "j/2/False/m"
    assert json.loads(turns[1].content) == {
        "error": "invalid arguments: json: Field required; schema: Input should be a valid "
        "integer, unable to parse string as an integer"
    }
