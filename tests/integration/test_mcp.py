"""MCP servers' tools in the toolbox, against real servers built with the SDK: stdio scripts
the bot starts, and a Streamable HTTP server in this process."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from core.config import ConfigError
from core.model import MediaKind, ToolCall
from core.sections import MCPServerSettings, MCPSettings
from core.tools.mcp import MCPServers
from core.tools.mcp.servers import tool_name
from core.tools.toolbox import Toolbox, ToolContext
from tests.fakes.mcp_servers import CHANGING, CRASHING, HANGING, TOOLS
from tests.fakes.mcp_servers.http_server import http_mcp
from tests.helpers import FileResponder, user_message, wait_for

START = 20.0  # seconds a server may take to start: a Python process importing the SDK


def stdio(script: Path, **extra: object) -> MCPServerSettings:
    return MCPServerSettings(command=sys.executable, args=[str(script)], **extra)  # type: ignore[arg-type]


def context(responder: FileResponder | None = None) -> ToolContext:
    return ToolContext(user_message("hi"), "conv", responder)


async def call(toolbox: Toolbox, name: str, arguments: Mapping[str, object] | None = None,
               responder: FileResponder | None = None) -> str:  # fmt: skip
    return await toolbox.run(ToolCall("c1", name, json.dumps(arguments or {})), context(responder))


@asynccontextmanager
async def running(
    servers: dict[str, MCPServerSettings],
    enabled: list[str],
    *,
    environ: Mapping[str, str] | None = None,
    restart_max: float = 1.0,
    ping_every: float = 15.0,
    timeout: float = 10.0,
) -> AsyncIterator[tuple[MCPServers, Toolbox]]:
    """The servers started, every one of them up."""
    toolbox = Toolbox(timeout=timeout)
    settings = MCPSettings(servers=servers, restart_max=restart_max, start_timeout=START)
    mcp = MCPServers(settings, toolbox, enabled=enabled, environ=environ, ping_every=ping_every)
    async with mcp:
        await wait_for(lambda: all(s["state"] == "up" for s in mcp.health().values()), START)
        yield mcp, toolbox


def server_processes() -> list[int]:
    """Children of this process running Python, as the fake servers do (the process table)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid() and cmdline.split("\0")[0] == sys.executable:
            found.append(int(entry.name))
    return found


async def test_tools_are_offered_by_pattern_and_answer():
    servers = {"t": stdio(TOOLS)}
    async with running(servers, ["t__echo", "t__a*", "t__odd*", "t__fail"]) as (mcp, toolbox):
        assert sorted(toolbox.tools) == ["t__add", "t__echo", "t__fail", "t__odd_name_with_spaces"]
        spec = toolbox.tools["t__add"].spec()["function"]
        assert spec["description"] == "Add two integers."
        assert spec["parameters"]["required"] == ["a", "b"]
        assert spec["parameters"]["properties"]["a"]["type"] == "integer"
        assert await call(toolbox, "t__echo", {"text": "hi"}) == "echo: hi"
        assert json.loads(await call(toolbox, "t__add", {"a": 2, "b": 3})) == {
            "a": 2, "b": 3, "sum": 5}  # fmt: skip
        assert await call(toolbox, "t__odd_name_with_spaces") == "odd"
        error = json.loads(await call(toolbox, "t__fail", {"reason": "no luck"}))
        assert "no luck" in error["error"]  # isError: the model reads the server's words
        assert mcp.health() == {"t": {"state": "up", "tools": 4, "error": "", "restarts": 0}}


def test_tool_names_fit_openai():
    assert tool_name("gh", "a.b/c d") == "gh__a_b_c_d"
    long_one, long_two = tool_name("gh", "x" * 80 + "1"), tool_name("gh", "x" * 80 + "2")
    assert len(long_one) == 64 and long_one != long_two


async def test_an_image_is_noted_for_the_model_and_posted():
    responder = FileResponder()
    async with running({"t": stdio(TOOLS)}, ["t__*"]) as (_, toolbox):
        text = await call(toolbox, "t__picture", responder=responder)
    assert text.startswith("[image: image/png, ") and text.endswith(" bytes]")
    [file] = responder.sent_files
    assert file.kind is MediaKind.IMAGE and file.mime_type == "image/png"
    assert file.data.startswith(b"\x89PNG") and f"{len(file.data)} bytes" in text


async def test_a_crash_mid_call_is_an_error_then_the_server_comes_back(caplog):
    caplog.set_level(logging.WARNING, "core.tools.mcp")
    async with running({"k": stdio(CRASHING)}, ["k__*"]) as (mcp, toolbox):
        before = await call(toolbox, "k__alive")
        error = json.loads(await call(toolbox, "k__crash"))
        assert "stopped during the call" in error["error"]
        await wait_for(lambda: mcp.health()["k"]["state"] != "up", 5)
        assert "k__alive" not in toolbox.tools  # gone at once, while it restarts
        assert json.loads(await call(toolbox, "k__alive"))["error"].startswith("there is no tool")
        await wait_for(lambda: mcp.health()["k"]["state"] == "up", START)
        health = mcp.health()["k"]
        assert health["restarts"] == 1 and health["tools"] == 2
        after = await call(toolbox, "k__alive")
        assert after.startswith("alive ") and after != before  # a new process
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mcp server k is down" in warnings[0].getMessage()


async def test_a_hanging_call_times_out_and_the_server_stays_up():
    servers = {"h": stdio(HANGING, timeout=1.0)}
    async with running(servers, ["h__*"]) as (mcp, toolbox):
        started = time.monotonic()
        error = json.loads(await call(toolbox, "h__hang"))
        assert error["error"] == "the tool did not answer within 1 seconds"
        assert time.monotonic() - started < 3
        assert await call(toolbox, "h__quick") == "quick"
        assert mcp.health()["h"]["state"] == "up"


async def test_list_changed_updates_the_tools():
    async with running({"c": stdio(CHANGING)}, ["c__*"]) as (mcp, toolbox):
        assert list(toolbox.tools) == ["c__grow"]
        assert await call(toolbox, "c__grow") == "grown"
        await wait_for(lambda: "c__late" in toolbox.tools, 5)
        assert await call(toolbox, "c__late") == "late"
        assert mcp.health()["c"]["tools"] == 2


async def test_http_server_with_a_header_from_the_environment(caplog):
    caplog.set_level(logging.DEBUG)
    async with http_mcp("s3cret-token") as fake:
        server = MCPServerSettings(url=fake.url, headers={"Authorization": "Bearer ${MCP_TOKEN}"})
        environ = {"MCP_TOKEN": "s3cret-token", "PATH": os.environ["PATH"]}
        async with running({"web": server}, ["web__*"], environ=environ, ping_every=0.2) as (
            mcp,
            toolbox,
        ):
            assert await call(toolbox, "web__whoami") == "you are the bot"
            assert fake.authorizations == ["Bearer s3cret-token"]
            await fake.stop()  # the endpoint goes away: the ping finds out
            await wait_for(lambda: mcp.health()["web"]["state"] != "up", 10)
            assert "web__whoami" not in toolbox.tools
    assert "s3cret-token" not in caplog.text


async def test_config_errors_name_the_key_before_anything_starts():
    settings = MCPSettings(servers={"gh": MCPServerSettings(command="no-such-mcp-server-x")})
    with pytest.raises(ConfigError, match=r"mcp\.servers\.gh\.command: 'no-such-mcp-server-x'"):
        MCPServers(settings, Toolbox(), enabled=["gh__*"])
    not_executable = MCPServerSettings(command=str(TOOLS))  # a script without its x bit
    with pytest.raises(ConfigError, match=r"mcp\.servers\.gh\.command: .* not executable"):
        MCPServers(MCPSettings(servers={"gh": not_executable}), Toolbox(), enabled=[])
    server = MCPServerSettings(command=sys.executable, env={"TOKEN": "${GH_TOKEN_MISSING}"})
    with pytest.raises(ConfigError, match=r"mcp\.servers\.gh\.env\.TOKEN: .*GH_TOKEN_MISSING"):
        MCPServers(MCPSettings(servers={"gh": server}), Toolbox(), enabled=[], environ={})
    assert server_processes() == []


async def test_stop_leaves_no_server_process():
    servers = {"t": stdio(TOOLS), "h": stdio(HANGING, timeout=30.0)}
    async with running(servers, ["t__*", "h__*"]) as (mcp, toolbox):
        assert len(server_processes()) == 2
        assert await call(toolbox, "t__echo", {"text": "x"}) == "echo: x"
    assert server_processes() == []
    assert toolbox.tools == {}
    assert all(s["state"] == "down" for s in mcp.health().values())


async def test_a_server_that_fails_or_hangs_at_start_is_down_and_retried(caplog):
    caplog.set_level(logging.WARNING, "core.tools.mcp")
    exits = MCPServerSettings(command=sys.executable, args=["-c", "raise SystemExit(1)"])
    mute = MCPServerSettings(command=sys.executable, args=["-c", "import time; time.sleep(60)"])
    toolbox = Toolbox()
    settings = MCPSettings(
        servers={"exits": exits, "mute": mute, "t": stdio(TOOLS)}, restart_max=0.2,
        start_timeout=1.0)  # fmt: skip
    async with MCPServers(settings, toolbox, enabled=["*"]) as mcp:
        await wait_for(lambda: mcp.health()["exits"]["restarts"] >= 2, 10)
        await wait_for(lambda: mcp.health()["mute"]["restarts"] >= 1, 10)
        health = mcp.health()
        assert health["exits"]["state"] in ("down", "starting")
        assert "no answer to initialize and tools/list in 1s" in health["mute"]["error"]
        assert all(not name.startswith(("exits__", "mute__")) for name in toolbox.tools)
    assert server_processes() == []
    assert any("mcp server mute is down" in r.getMessage() for r in caplog.records)
