"""The slash command tree that answers every interaction, even one it cannot run.

Discord delivers interactions against the commands it has registered, which can be older or
newer than the bot's (a sync still propagating, another build on the same application): an
integer where the bot takes text, a missing or unknown option, 50 of them. discord.py then
passes a wrong value to the callback, or raises (`TransformerError`, `CommandNotFound`,
`CommandSignatureMismatch`) into `on_error`, which only logs, or raises something else that
no handler sees; either way the user is left with "The application did not respond".
`interaction_check` and `on_error`, the hooks discord.py documents for overriding, make sure
the user gets an apology within Discord's 3 s instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from adapters.webhook_guard import ThrottledLog

log = logging.getLogger(__name__)

APOLOGY = (
    "Sorry, I could not read that command: Discord may still be updating my commands. "
    "Please try again in a minute."
)


class CheckedTree(app_commands.CommandTree[discord.Client]):
    """A `CommandTree` that refuses options its command does not take, and apologises for
    every interaction that fails."""

    def __init__(self, client: discord.Client, **options: Any) -> None:
        super().__init__(client, **options)
        self.refusals = ThrottledLog(log)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.type is not discord.InteractionType.application_command:
            return True
        try:
            matches = self._options_match(interaction)
        except Exception:  # a payload shaped unlike any command: never an unanswered task
            matches = False
        if not matches:
            name = _command_name(interaction)
            self.refusals.warning(f"discord: /{name} came with options it does not take")
            await apologise(interaction)
        return matches

    def _options_match(self, interaction: discord.Interaction) -> bool:
        data: Any = interaction.data or {}
        if data.get("type", 1) != 1:
            return True  # context menus take no options
        guild = discord.Object(int(data["guild_id"])) if data.get("guild_id") else None
        command = self.get_command(str(data.get("name", "")), guild=guild)
        if command is None and guild is not None and self.fallback_to_global:
            command = self.get_command(str(data.get("name", "")))
        if not isinstance(command, app_commands.Command):
            return True  # unknown command or a group: discord.py raises into on_error
        params = {p.name: p for p in command.parameters}
        options = data.get("options") or []
        names = [option.get("name") for option in options]
        return (
            len(names) == len(set(names))
            and all(name in params for name in names)
            and all(option.get("type") == params[option["name"]].type.value for option in options)
            and all(p.name in names for p in params.values() if p.required)
        )

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        name = _command_name(interaction)
        if isinstance(error, app_commands.CommandInvokeError):  # our bug: keep the traceback
            log.error("discord: /%s failed", name, exc_info=error.original)
        else:
            self.refusals.warning(f"discord: /{name} could not run ({type(error).__name__})")
        await apologise(interaction)


def _command_name(interaction: discord.Interaction) -> str:
    """The command's name as Discord sent it, cut short for a log line."""
    data: Mapping[str, object] = interaction.data or {}
    return str(data.get("name", "?"))[:32]


async def apologise(interaction: discord.Interaction) -> None:
    """Answer the interaction with the apology, or replace the deferred "thinking…" with it."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=APOLOGY)
        else:
            await interaction.response.send_message(APOLOGY, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("discord: the apology failed too (%s)", type(exc).__name__)
