"""An example plugin: a `/roll` command, a coin-flip intent and a dice tool for the model.

Enable it in config.yaml:

    plugins: [bots.plugins.dice]
    tools:
      enabled: [roll_dice]      # offer the tool to the model (optional)

A plugin is a module with a `setup(bot)` function; `bot` is the registry (core.plugins.Plugins)
whose decorators register what the plugin offers. Nothing is discovered behind your back.
"""

from __future__ import annotations

import random
import re
from typing import Annotated

from core.model import IntentMatch, Message
from core.plugins import Plugins
from core.tools.toolbox import ToolError

DICE = re.compile(r"^\s*(\d{0,2})\s*d\s*(\d{1,3})\s*$", re.IGNORECASE)
MAX_DICE = 20


def roll(count: int, sides: int, rng: random.Random) -> list[int]:
    """`count` rolls of a `sides`-sided die."""
    return [rng.randint(1, sides) for _ in range(count)]


def setup(bot: Plugins) -> None:
    """Register the plugin's command, intent and tool."""
    rng = random.SystemRandom()

    @bot.command("roll", help="roll dice, e.g. `/roll 2d6` (default 1d6)")
    async def roll_command(message: Message) -> str:
        args = message.command.args if message.command else ""
        found = DICE.match(args or "1d6")
        if not found:
            return "Tell me what to roll like `/roll 2d6` (up to 20 dice of up to 999 sides)."
        count, sides = int(found.group(1) or 1), int(found.group(2))
        if not 1 <= count <= MAX_DICE or sides < 2:
            return f"I can roll 1 to {MAX_DICE} dice with at least 2 sides each."
        rolls = roll(count, sides, rng)
        shown = " + ".join(str(r) for r in rolls)
        return f"🎲 {count}d{sides}: {shown} = *{sum(rolls)}*" if count > 1 else f"🎲 *{rolls[0]}*"

    @bot.intent(
        "coin_flip",
        keywords=["flip a coin", "toss a coin", "heads or tails"],
        description="flip a coin: “heads or tails?”",
    )
    async def coin_flip(match: IntentMatch) -> str:
        return f"🪙 {rng.choice(['Heads', 'Tails'])}!"

    @bot.tool
    def roll_dice(
        sides: Annotated[int, "sides of each die"] = 6,
        count: Annotated[int, "how many dice"] = 1,
    ) -> dict[str, object]:
        """Roll dice fairly and return every roll and the total."""
        if not 1 <= count <= MAX_DICE or sides < 2:
            raise ToolError(f"count must be 1-{MAX_DICE} and sides at least 2")
        rolls = roll(count, sides, rng)
        return {"rolls": rolls, "total": sum(rolls)}
