"""A stdio MCP server whose `hang` tool never answers (the server itself stays responsive)."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("hanging")


@server.tool()
async def hang() -> str:
    """Never returns."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def quick() -> str:
    """Answers at once."""
    return "quick"


if __name__ == "__main__":
    server.run()
