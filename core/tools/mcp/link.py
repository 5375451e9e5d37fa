"""One MCP server's connection, opened by the SDK's client transports.

`open_session` yields an initialized `ClientSession` and an `Ended` flag that is set the
moment the transport's read stream ends (a stdio server's process exited, the HTTP
transport closed): the SDK's dispatcher then fails the calls in flight, but says nothing to
the session's owner, so the supervisor watches the stream itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import httpx2
from mcp.client._transport import ReadStream  # the protocol the session takes
from mcp.client.session import ClientSession, MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from core.tools.mcp.plan import ServerPlan

CLIENT_INFO = Implementation(name="chatbot", version="0.2.0")
# The SDK's own defaults for an MCP HTTP client: a response stream may stay open for long.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)

T = TypeVar("T")


class Ended:
    """Set when the server's side of the connection is gone; wakes whoever waits on it."""

    def __init__(self, wake: asyncio.Event) -> None:
        self.is_set = False
        self._wake = wake

    def set(self) -> None:
        self.is_set = True
        self._wake.set()


class _WatchedStream(Generic[T]):
    """The transport's read stream, passed through, with its end reported to `ended`.

    Satisfies the SDK's `ReadStream` protocol; `last_context` is forwarded because the
    dispatcher reads it (duck-typed) from the HTTP transport's streams."""

    def __init__(self, inner: ReadStream[T], ended: Ended) -> None:
        self._inner = inner
        self._ended = ended

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> T:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None


@asynccontextmanager
async def open_session(
    plan: ServerPlan, ended: Ended, message_handler: MessageHandlerFnT
) -> AsyncIterator[ClientSession]:
    """Start (stdio) or reach (HTTP) the server and open a session on it, not yet initialized.

    Leaving the block closes the session and, for stdio, stops the process and its children
    (the SDK closes stdin, then sends SIGTERM and SIGKILL to the process group)."""
    async with AsyncExitStack() as stack:
        if plan.command is not None:
            parameters = StdioServerParameters(
                command=plan.command, args=list(plan.settings.args), env=dict(plan.env)
            )
            read, write = await stack.enter_async_context(stdio_client(parameters))
        else:
            assert plan.settings.url is not None  # MCPServerSettings: command or url
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=dict(plan.headers), timeout=HTTP_TIMEOUT)
            )
            read, write = await stack.enter_async_context(
                streamable_http_client(plan.settings.url, http_client=http)
            )
        session = ClientSession(
            _WatchedStream(read, ended),
            write,
            message_handler=message_handler,
            client_info=CLIENT_INFO,
        )
        yield await stack.enter_async_context(session)
