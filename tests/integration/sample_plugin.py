"""A plugin used by the tests: tools that nap, fail and report when they ran."""

from __future__ import annotations

import asyncio
import time

from core.plugins import Plugins
from core.tools.toolbox import ToolContext


def setup(bot: Plugins) -> None:
    @bot.tool
    async def nap(seconds: float) -> dict[str, float]:
        """Sleep a while and say when the nap started and ended."""
        started = time.monotonic()
        await asyncio.sleep(seconds)
        return {"started": started, "ended": time.monotonic()}

    @bot.tool(name="explode", description="Always fails.")
    def explode(reason: str = "boom") -> str:
        raise RuntimeError(reason)

    @bot.tool
    async def whoami(context: ToolContext) -> str:
        """Who is asking."""
        return f"{context.message.user.id} in {context.conversation}"
