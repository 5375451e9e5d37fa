"""Real MCP servers built with the SDK's server side, for tests/integration/test_mcp.py.

The stdio ones are scripts run as `sys.executable <script>`; `http_server` runs a Streamable
HTTP server in this process on 127.0.0.1 (uvicorn, which the SDK depends on)."""

from pathlib import Path

HERE = Path(__file__).parent
TOOLS = HERE / "tools_server.py"  # echo, add (structured), picture (an image), fail (isError)
CRASHING = HERE / "crashing_server.py"  # crash: the process exits mid-call
HANGING = HERE / "hanging_server.py"  # hang: never answers
CHANGING = HERE / "changing_server.py"  # grow: adds a tool and sends list_changed
