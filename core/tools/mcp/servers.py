"""MCP servers, supervised: each one a task that connects, offers the server's tools in the
toolbox while the server is up, and reconnects with a growing pause when it fails.

A server that will not start, dies (its process exits, its HTTP endpoint stops answering)
or hangs (no answer to initialize, tools/list or a ping within `mcp.start_timeout`) loses
its tools from the toolbox at once, is reported down by `health()`, logged once per
failure, and restarted after 0.5 s, 1 s, 2 s … up to `mcp.restart_max`. The chat never
waits for a server: a turn simply sees the tools that are up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NoReturn

import anyio
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    PaginatedRequestParams,
    ToolListChangedNotification,
)
from mcp_types import Tool as MCPTool

from core.protocols import MediaResponder
from core.sections import MCPSettings
from core.tools.mcp.link import Ended, open_session
from core.tools.mcp.plan import ServerPlan, plan_servers
from core.tools.mcp.results import convert
from core.tools.toolbox import Tool, Toolbox, ToolContext, ToolError

log = logging.getLogger(__name__)

State = Literal["starting", "up", "down"]
FIRST_RESTART = 0.5  # seconds before the first restart; doubled after each failure
PING_EVERY = 15.0  # seconds between liveness pings (an HTTP server's death shows only there)
MAX_PAGES = 100  # tools/list pages followed, against a server whose cursor never ends
NAME_LIMIT = 64  # OpenAI's limit on a function name; its characters: [A-Za-z0-9_-]


def tool_name(server: str, tool: str) -> str:
    """`<server>__<tool>` in the characters OpenAI allows; a name over 64 keeps its start
    and ends in a hash of the whole, so two long names stay apart."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")
    if len(name) > NAME_LIMIT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: NAME_LIMIT - 9]}_{digest}"
    return name


class _Down(Exception):
    """The connection ended, or a check of it failed: `reason` is short and has no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Server:
    """One server's supervisor: the task, the live session, the tools it put in the toolbox."""

    def __init__(self, plan: ServerPlan, owner: MCPServers) -> None:
        self.plan = plan
        self.name = plan.name
        self.owner = owner
        self.timeout = plan.settings.timeout or owner.tool_timeout
        self.state: State = "starting"
        self.error = ""
        self.restarts = 0
        self.offered: dict[str, str] = {}  # toolbox name -> the server's tool name
        self.session: ClientSession | None = None
        self.up_since: float | None = None
        self._wake = asyncio.Event()
        self._relist = False

    def health(self) -> dict[str, object]:
        return {
            "state": self.state,
            "tools": len(self.offered),
            "error": self.error,
            "restarts": self.restarts,
        }

    async def supervise(self) -> None:
        """Connect, serve, and after any failure wait and connect again, until cancelled."""
        loop = asyncio.get_running_loop()
        first = min(FIRST_RESTART, self.owner.settings.restart_max)
        pause = first
        while True:
            self.state = "starting"
            self.up_since = None
            try:
                await self._serve()
            except _Down as exc:
                self.error = exc.reason
            except Exception as exc:  # the SDK's and the transport's, often in an ExceptionGroup
                self.error = _describe(exc)
            finally:
                self.session = None
                self._withdraw()
            self.state = "down"
            if self.up_since is not None and loop.time() - self.up_since > 4 * pause:
                pause = first  # it had been up a good while: a fresh failure, not a loop
            log.warning(
                "mcp server %s is down (%s); restarting in %.1fs", self.name, self.error, pause
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.owner.settings.restart_max)
            self.restarts += 1

    async def _serve(self) -> None:
        """One connection's life: start, initialize, list, offer, watch; leaves by raising."""
        ended = Ended(self._wake)
        self._wake.clear()
        self._relist = False
        start_timeout = self.owner.settings.start_timeout
        async with open_session(self.plan, ended, self._on_message) as session:
            try:
                with anyio.fail_after(start_timeout):
                    await session.initialize()
                    tools = await _list_tools(session)
            except TimeoutError:
                reason = f"no answer to initialize and tools/list in {start_timeout:g}s"
                raise _Down(reason) from None
            self.session = session
            self._offer(tools)
            self.state = "up"
            self.error = ""
            self.up_since = asyncio.get_running_loop().time()
            log.info("mcp server %s is up with %d tools", self.name, len(self.offered))
            await self._watch(session, ended)

    async def _watch(self, session: ClientSession, ended: Ended) -> NoReturn:
        """Until the connection ends: re-list on list_changed, ping when idle or suspect."""
        start_timeout = self.owner.settings.start_timeout
        while True:
            with anyio.move_on_after(self.owner.ping_every):
                await self._wake.wait()
            self._wake.clear()
            if ended.is_set:
                raise _Down("the connection closed" if self.plan.command is None else "it exited")
            try:
                with anyio.fail_after(start_timeout):
                    if self._relist:
                        self._relist = False
                        self._offer(await _list_tools(session))
                    else:
                        await session.send_ping()
            except TimeoutError:
                raise _Down(f"no answer within {start_timeout:g}s") from None
            except MCPError as exc:
                if ended.is_set:
                    continue  # reported as the end, above
                raise _Down(f"the check failed: {exc.message[:80]}") from None

    async def _on_message(self, message: IncomingMessage) -> None:
        """The SDK's message handler: list_changed wakes the watcher to re-list; a transport
        error wakes it to ping (the work is done there, not on the SDK's receive path)."""
        if isinstance(message, ToolListChangedNotification):
            self._relist = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.debug("mcp server %s: transport error %s", self.name, type(message).__name__)
            self._wake.set()

    def _offer(self, tools: Sequence[MCPTool]) -> None:
        """Put the server's enabled tools in the toolbox, replacing those it offered before."""
        offered: dict[str, str] = {}
        entries: dict[str, Tool] = {}
        for tool in tools:
            name = tool_name(self.name, tool.name)
            if name in offered or not self.owner.enabled(name):
                continue
            offered[name] = tool.name
            entries[name] = Tool(
                name,
                (tool.description or tool.title or tool.name).strip()[:1024],
                _parameters(tool.input_schema),
                self._runner(tool.name),
                timeout=self.timeout + 1.0,  # the call's own timeout answers first, and clearer
                approve=self.owner.approve(name),
            )
        self._withdraw()
        self.owner.toolbox.tools.update(entries)
        self.offered = offered

    def _withdraw(self) -> None:
        for name in self.offered:
            self.owner.toolbox.tools.pop(name, None)
        self.offered = {}

    def _runner(self, real_name: str) -> Any:
        async def run(arguments: dict[str, Any], context: ToolContext) -> str:
            return await self.call(real_name, arguments, context)

        return run

    async def call(self, tool: str, arguments: dict[str, Any], context: ToolContext) -> str:
        """Run one call; anything that goes wrong is a ToolError the model reads."""
        session = self.session
        if session is None or self.state != "up":
            raise ToolError(f"the MCP server {self.name} is not available right now")
        try:
            result = await session.call_tool(tool, arguments, read_timeout_seconds=self.timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                message = f"the tool did not answer within {self.timeout:g} seconds"
                raise ToolError(message) from None
            if exc.code == CONNECTION_CLOSED:
                self._wake.set()
                raise ToolError(
                    f"the MCP server {self.name} stopped during the call; it is being restarted"
                ) from None
            raise ToolError(f"the MCP server refused the call: {exc.message}") from None
        except (RuntimeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            message = f"the MCP server's answer could not be read ({type(exc).__name__})"
            raise ToolError(message) from None
        output = convert(result, tool=tool)
        if output.error:
            raise ToolError(output.text or "the tool reported an error")
        responder = context.responder
        if output.files and isinstance(responder, MediaResponder):
            for file in output.files:
                try:
                    await responder.send_file(file)
                except Exception as exc:  # posting is a courtesy; the model has the note
                    log.warning("posting an MCP image failed: %s", type(exc).__name__)
        return output.text


class MCPServers:
    """Every server of `mcp.servers`, its enabled tools kept in `toolbox` while it is up.

    Construction checks the config (ConfigError naming `mcp.servers.<name>.<key>`) and
    starts nothing; `start()` (or `async with`) starts one supervisor task per server and
    returns at once; `stop()` closes every session and stops every process it started."""

    def __init__(
        self,
        settings: MCPSettings,
        toolbox: Toolbox,
        *,
        enabled: Sequence[str],
        approve: Callable[[str], bool] = lambda name: False,
        environ: Mapping[str, str] | None = None,
        ping_every: float = PING_EVERY,
    ) -> None:
        self.settings = settings
        self.toolbox = toolbox
        self.approve = approve  # which tools wait for a person's yes (`tools.approve`, ...)
        self.tool_timeout = toolbox.timeout
        self.ping_every = ping_every
        self._patterns = list(enabled)
        self._servers = [_Server(plan, self) for plan in plan_servers(settings, environ)]
        self._tasks: list[asyncio.Task[None]] = []

    def enabled(self, name: str) -> bool:
        """Whether `tools.enabled` names the tool or matches it (`github__*`)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

    def approve_patterns(self) -> list[str]:
        """`<server>__*` for each server whose every tool needs approval (`approve: true`)."""
        return [f"{s.name}__*" for s in self._servers if s.plan.settings.approve]

    def health(self) -> dict[str, dict[str, object]]:
        """Each server: state (up, starting, down), tools offered, last error, restarts."""
        return {server.name: server.health() for server in self._servers}

    async def start(self) -> None:
        for server in self._servers:
            task = asyncio.create_task(server.supervise(), name=f"mcp-{server.name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel the supervisors; each leaves its session and stops its process (bounded:
        the SDK waits 2 s for a clean exit, then terminates and kills the process group)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            server._withdraw()
            server.state = "down"
            server.error = "stopped"

    async def __aenter__(self) -> MCPServers:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _list_tools(session: ClientSession) -> list[MCPTool]:
    """Every page of tools/list."""
    tools: list[MCPTool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _parameters(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's inputSchema as a function's parameters (an object, with `properties`)."""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    parameters.update(schema)
    return parameters


def _describe(exc: BaseException) -> str:
    """A short reason for the log and health: the innermost error's type and first line,
    never the config (env and headers stay out of exceptions the SDK raises)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
