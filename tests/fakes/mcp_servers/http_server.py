"""A Streamable HTTP MCP server in this process (uvicorn on 127.0.0.1, port 0) whose tool
answers only a request carrying the expected bearer token; it records the headers seen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


@dataclass
class HttpMCP:
    """The running server: its endpoint, and the Authorization headers it received."""

    token: str
    url: str = ""
    authorizations: list[str] = field(default_factory=list)
    server: uvicorn.Server | None = None

    def app(self) -> object:
        mcp = MCPServer("http")

        @mcp.tool()
        async def whoami(ctx: Context) -> str:
            """Who the caller is, by its token."""
            headers = ctx.headers or {}
            authorization = headers.get("authorization", "")
            self.authorizations.append(authorization)
            if authorization != f"Bearer {self.token}":
                raise ToolError("unauthorized")
            return "you are the bot"

        return mcp.streamable_http_app()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True


@contextlib.asynccontextmanager
async def http_mcp(token: str) -> AsyncIterator[HttpMCP]:
    """Serve until the block ends."""
    fake = HttpMCP(token)
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    fake.server = server
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}/mcp"
        yield fake
    finally:
        server.should_exit = True
        await task
