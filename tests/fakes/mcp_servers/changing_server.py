"""A stdio MCP server that grows a tool when `grow` is called, and says so with
notifications/tools/list_changed."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("changing")


def late() -> str:
    """A tool that exists only after `grow`."""
    return "late"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the `late` tool and tells the client its tool list changed."""
    server.add_tool(late, name="late")
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    server.run()
