"""What every fake server shares: listening on a free loopback port, reading request bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


async def serve_locally(
    app: web.Application, *, shutdown_timeout: float = 0.2
) -> tuple[web.AppRunner, int]:
    """Start `app` on 127.0.0.1, port 0; return its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def read_params(request: web.Request) -> dict[str, Any]:
    """A JSON body, or a form whose JSON-looking values are decoded (as SDKs send them)."""
    if request.content_type == "application/json":
        data = await request.json()
        return dict(data) if isinstance(data, dict) else {}
    form = await request.post()
    params: dict[str, Any] = {}
    for key, value in form.items():
        text = value if isinstance(value, str) else ""
        if text[:1] in "[{":
            try:
                params[key] = json.loads(text)
                continue
            except ValueError:
                pass
        params[key] = text
    return params
