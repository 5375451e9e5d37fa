"""MCP servers' tools in the toolbox: each server configured under `mcp.servers` is started
(stdio) or reached (Streamable HTTP) by the official SDK's client, kept alive, and its tools
offered to the model as `<server>__<tool>`."""

from core.tools.mcp.plan import ServerPlan, plan_servers
from core.tools.mcp.servers import MCPServers

__all__ = ["MCPServers", "ServerPlan", "plan_servers"]
