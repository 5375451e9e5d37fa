"""Plugins: Python modules named in config (`plugins: [package.module]`).

A plugin module defines `setup(bot)`; `bot` is a `Plugins` registry with three decorators:

    def setup(bot):
        @bot.command("roll", help="roll dice: /roll 2d6")
        async def roll(message): return "4"

        @bot.intent("coin", keywords=["flip a coin"])
        async def coin(match): return "Heads!"

        @bot.tool
        def word_count(text: str) -> int:
            "Count the words of a text."
            return len(text.split())

No module globals and no discovery: the registry is passed in, and what a plugin registers
is what it explicitly decorated. A plugin that fails to import or to set up stops the start
with a `PluginError` naming the module and the error.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from core.model import IntentMatch, Message
from core.sections import IntentSettings
from core.tools.toolbox import Tool, function_tool

log = logging.getLogger(__name__)

RESERVED_COMMANDS = frozenset({"help", "start", "reset", "persona", "model", "usage", "ask"})
COMMAND_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")

CommandFunction = Callable[[Message], Awaitable[str] | str]
IntentHandler = Callable[[IntentMatch], Awaitable[str] | str]
F = TypeVar("F", bound=Callable[..., Any])


class PluginError(Exception):
    """A plugin could not be loaded; the message names the module and says why."""


@dataclass(frozen=True, slots=True)
class PluginCommand:
    """A `/name` command from a plugin: it returns the reply text."""

    name: str
    run: CommandFunction
    help: str
    plugin: str


@dataclass
class Plugins:
    """What the plugins registered. `setup(bot)` receives one, scoped to its module."""

    commands: dict[str, PluginCommand] = field(default_factory=dict)
    handlers: dict[str, IntentHandler] = field(default_factory=dict)
    intents: list[IntentSettings] = field(default_factory=list)
    tools: dict[str, Tool] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    current: str = "(direct)"

    def command(self, name: str, *, help: str = "") -> Callable[[F], F]:
        """Register `/name`; the function gets the Message and returns the reply."""
        name = name.lower().lstrip("/")
        if not COMMAND_NAME.match(name):
            raise PluginError(f"plugin {self.current}: bad command name {name!r}")
        if name in RESERVED_COMMANDS or name in self.commands:
            raise PluginError(f"plugin {self.current}: the command /{name} is already taken")

        def register(func: F) -> F:
            self.commands[name] = PluginCommand(name, func, help, self.current)
            return func

        return register

    def intent(
        self,
        name: str,
        *,
        patterns: Sequence[str] = (),
        keywords: Sequence[str] = (),
        description: str = "",
        cache: bool = False,
    ) -> Callable[[F], F]:
        """Register an intent handler (it gets an IntentMatch and returns the reply).

        With patterns or keywords it is a whole intent; without, config intents use it by
        name (`handler: name`).
        """
        if name in self.handlers:
            raise PluginError(f"plugin {self.current}: the intent handler {name!r} is taken")
        if patterns or keywords:
            try:
                self.intents.append(
                    IntentSettings(
                        name=name,
                        patterns=list(patterns),
                        keywords=list(keywords),
                        handler=name,
                        description=description,
                        cache=cache,
                    )
                )
            except ValidationError as exc:
                problems = "; ".join(error["msg"] for error in exc.errors())
                raise PluginError(f"plugin {self.current}: intent {name!r}: {problems}") from None

        def register(func: F) -> F:
            self.handlers[name] = func
            return func

        return register

    def tool(
        self,
        func: F | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a function as a tool; its JSON schema comes from its type hints.

        Offer it to the model by listing its name under `tools.enabled`.
        """

        def register(function: F) -> F:
            try:
                tool = function_tool(function, name=name, description=description, timeout=timeout)
            except (TypeError, NameError) as exc:
                raise PluginError(f"plugin {self.current}: {exc}") from None
            if tool.name in self.tools:
                raise PluginError(f"plugin {self.current}: the tool {tool.name!r} is taken")
            self.tools[tool.name] = tool
            return function

        return register(func) if func is not None else register


def load_plugins(modules: Sequence[str]) -> Plugins:
    """Import each module and call its `setup(bot)`; PluginError at the first failure."""
    plugins = Plugins()
    for module_name in modules:
        plugins.current = module_name
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"plugin {module_name!r} failed to import: {type(exc).__name__}: {exc}"
            ) from None
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise PluginError(f"plugin {module_name!r} has no setup(bot) function")
        try:
            setup(plugins)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {module_name!r} failed in setup(bot): {type(exc).__name__}: {exc}"
            ) from None
        plugins.modules.append(module_name)
        log.info("plugin %s loaded", module_name)
    plugins.current = "(direct)"
    return plugins
