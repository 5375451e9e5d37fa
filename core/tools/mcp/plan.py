"""The start-time check of `mcp.servers`: commands found, `${NAME}` references resolved.

Everything that can be wrong in the config is found here, before any server starts, as a
`ConfigError` naming the key (exit 2, like a broken plugin), so a typo never becomes a
server that fails and restarts forever.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.config import ConfigError
from core.sections import MCPServerSettings, MCPSettings, expand_env


@dataclass(frozen=True, slots=True)
class ServerPlan:
    """One server as it will be run: its command resolved, its secrets expanded.

    `env` and `headers` hold secret values: they are passed to the SDK and never logged
    (`repr` leaves them out)."""

    name: str
    settings: MCPServerSettings
    command: str | None = None  # the resolved executable of a stdio server
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


def plan_servers(
    settings: MCPSettings, environ: Mapping[str, str] | None = None
) -> list[ServerPlan]:
    """Every configured server, checked; ConfigError (naming `mcp.servers.<name>.<key>`) for
    a command that is not found or not executable, or a `${NAME}` the environment lacks."""
    env = os.environ if environ is None else environ
    return [_plan(name, server, env) for name, server in settings.servers.items()]


def _plan(name: str, server: MCPServerSettings, environ: Mapping[str, str]) -> ServerPlan:
    where = f"mcp.servers.{name}"
    command = None
    if server.command is not None:
        command = _executable(server.command, f"{where}.command", environ)
    return ServerPlan(
        name=name,
        settings=server,
        command=command,
        env=_expand(server.env, f"{where}.env", environ),
        headers=_expand(server.headers, f"{where}.headers", environ),
    )


def _executable(command: str, key: str, environ: Mapping[str, str]) -> str:
    """The command's path, as the process will be started (PATH from our environment)."""
    found = shutil.which(command, path=environ.get("PATH", os.defpath))
    if found is not None:
        return found
    if os.sep in command and os.path.isfile(command):
        raise ConfigError(
            f"{key}: {command!r} is not executable (chmod +x it, or start its interpreter)"
        )
    raise ConfigError(f"{key}: {command!r} is not found on PATH (install it, or give a full path)")


def _expand(values: Mapping[str, str], key: str, environ: Mapping[str, str]) -> dict[str, str]:
    expanded = {}
    for name, value in values.items():
        try:
            expanded[name] = expand_env(value, environ)
        except KeyError as exc:
            raise ConfigError(
                f"{key}.{name}: the environment variable {exc.args[0]} is not set "
                "(`${NAME}` values come from the bot's environment)"
            ) from None
    return expanded
