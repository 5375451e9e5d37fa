"""A stdio MCP server with a few tools: text, structured output, an image, an error."""

from __future__ import annotations

from typing import TypedDict

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# The smallest valid PNG: 1x1, transparent.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)

server = MCPServer("tools")


class Sum(TypedDict):
    a: int
    b: int
    sum: int


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> Sum:
    """Add two integers."""
    return {"a": a, "b": b, "sum": a + b}


@server.tool()
def picture() -> Image:
    """A tiny picture."""
    return Image(data=PNG, format="png")


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason."""
    raise ToolError(reason)


@server.tool(name="odd.name/with spaces")
def odd() -> str:
    """A tool whose name needs sanitising."""
    return "odd"


if __name__ == "__main__":
    server.run()
