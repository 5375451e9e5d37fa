"""A stdio MCP server whose `crash` tool ends the process mid-call (as a segfault would)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("crashing")


@server.tool()
def alive() -> str:
    """Says it is alive, with its process id."""
    return f"alive {os.getpid()}"


@server.tool()
def crash() -> str:
    """Exits the process without answering."""
    os._exit(3)


if __name__ == "__main__":
    server.run()
