"""Tools the model may call: their JSON schemas, and running a round of calls safely.

A tool is a name, a description, a JSON schema of its arguments and an async function.
They come from HTTP actions (schema from config), plugin functions (schema from their type
hints) and the built-ins. A round of calls runs in parallel, each with a timeout; whatever
goes wrong (bad JSON, unknown tool, timeout, exception) reaches the model as an error
result, never as a crash.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import logging
import types
import typing
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from core.model import Message, ToolCall, Turn
from core.protocols import Responder

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000


class ToolError(Exception):
    """A tool's own, expected failure; its message is shown to the model."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who the tool runs for: the message being answered and its conversation id."""

    message: Message
    conversation: str
    responder: Responder | None = None  # where the answer goes: a tool may post a file there
    counts: Counter[str] = field(default_factory=Counter)  # what tools made (`images` drawn)


ToolFunction = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool as offered to the model."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    run: ToolFunction
    timeout: float | None = None  # None: the toolbox's
    approve: bool = False  # runs only after the person who asked says yes, in the chat

    def spec(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass
class Toolbox:
    """The tools offered in a turn, and the runner of the model's calls."""

    tools: dict[str, Tool] = field(default_factory=dict)
    timeout: float = 10.0

    def __bool__(self) -> bool:
        return bool(self.tools)

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self.tools.values()]

    def needs_approval(self, calls: Sequence[ToolCall]) -> bool:
        return any((tool := self.tools.get(c.name)) is not None and tool.approve for c in calls)

    async def run_all(self, calls: Sequence[ToolCall], context: ToolContext) -> list[Turn]:
        """Run every call of one round at once; one tool turn per call, in the call order."""
        results = await asyncio.gather(*(self.run(call, context) for call in calls))
        return [
            Turn("tool", result, tool_call_id=call.id)
            for call, result in zip(calls, results, strict=True)
        ]

    async def run(self, call: ToolCall, context: ToolContext) -> str:
        """One call's result as text for the model; never raises (but lets cancellation pass)."""
        tool = self.tools.get(call.name)
        if tool is None:
            return _error(f"there is no tool named {call.name!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return _error("the arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return _error("the arguments must be a JSON object")
        timeout = tool.timeout or self.timeout
        try:
            async with asyncio.timeout(timeout):
                result = await tool.run(arguments, context)
        except TimeoutError:
            log.warning("tool %s timed out after %ss", call.name, timeout)
            return _error(f"the tool did not answer within {timeout:g} seconds")
        except ToolError as exc:
            log.info("tool %s refused the call", call.name)  # its words may echo user text
            return _error(str(exc))
        except Exception as exc:
            log.warning("tool %s failed: %s", call.name, type(exc).__name__, exc_info=True)
            return _error(f"the tool failed ({type(exc).__name__})")
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + "…(truncated)"
        return text


def _error(message: str) -> str:
    return json.dumps({"error": message})


def function_tool(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Tool:
    """A tool from a plain (async or sync) function: its schema comes from its type hints.

    A parameter annotated `ToolContext` receives the context instead of a model argument;
    `Annotated[str, "what it is"]` gives a parameter its description. Sync functions run in
    a worker thread so they cannot block the event loop.
    """
    tool_name = name or func.__name__
    hints = typing.get_type_hints(func, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_param = ""
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, str)
        if hint is ToolContext or ToolContext in typing.get_args(hint):
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {tool_name}: parameter {param.name!r} must be a named one")
        try:
            schema = json_schema(hint)
        except TypeError as exc:
            raise TypeError(f"tool {tool_name}: parameter {param.name!r}: {exc}") from None
        if param.default is param.empty:
            required.append(param.name)
        elif isinstance(param.default, str | int | float | bool):
            schema["default"] = param.default
        properties[param.name] = schema
    parameters = {"type": "object", "properties": properties, "required": required}
    doc = inspect.getdoc(func) or ""
    text = description or doc.split("\n\n")[0].replace("\n", " ").strip() or tool_name
    validator = _arguments_model(tool_name, func, hints, properties, context_param)

    async def run(arguments: dict[str, Any], context: ToolContext) -> Any:
        try:  # the types the function declares, checked before it runs (`n: int` gets an int)
            valid = validator.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_describe_errors(exc)) from None
        kwargs = {key: getattr(valid, _FIELD + key) for key in properties}
        if context_param:
            kwargs[context_param] = context
        if inspect.iscoroutinefunction(func):
            return await func(**kwargs)
        return await asyncio.to_thread(func, **kwargs)

    return Tool(tool_name, text, parameters, run, timeout)


_FIELD = "arg_"  # the prefix of the argument model's field names (the aliases are the real ones)


def _arguments_model(
    tool_name: str,
    func: Callable[..., Any],
    hints: dict[str, Any],
    properties: Mapping[str, Any],
    context_param: str,
) -> type[BaseModel]:
    """A pydantic model of the function's model-given parameters: missing, unknown and
    ill-typed arguments are refused with a message the model can act on."""
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.name == context_param or param.name not in properties:
            continue
        default = ... if param.default is param.empty else param.default
        # Under a name of ours, the parameter's as the alias: a parameter called `json`,
        # `schema` or `model_config` must not shadow (or break) BaseModel's own attributes.
        field = Field(default, alias=param.name)
        fields[_FIELD + param.name] = (hints.get(param.name, str), field)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{tool_name}_arguments", __config__=config, **fields)


def _describe_errors(exc: ValidationError) -> str:
    """`n: Input should be a valid integer; extra: Extra inputs are not permitted`."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "invalid arguments: " + "; ".join(parts)


JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (str, int, float, bool, Literal, Enum, list, dict,
    Optional, Annotated with a description); TypeError for anything else."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    schema: dict[str, Any]
    if origin is typing.Annotated:
        schema = json_schema(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if hint in JSON_TYPES:
        return {"type": JSON_TYPES[hint]}
    if origin is typing.Literal:
        kinds = {JSON_TYPES.get(type(v)) for v in args}
        schema = {"enum": list(args)}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return json_schema(options[0])
        return {"anyOf": [json_schema(a) for a in options]}
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        item = args[0] if args else str
        return {"type": "array", "items": json_schema(item)}
    if hint is dict or origin in (dict, Mapping):
        return {"type": "object"}
    raise TypeError(f"unsupported type hint {hint!r} (use str, int, float, bool, Literal, list)")
