"""What every fake server shares: listening on a free loopback port, reading request bodies,
and a per-channel index of what the bot has on screen that drivers can wait on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Hashable
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


class Screen:
    """The bot's messages per channel, in the order they were posted, with a wait for the next
    change in a channel. Drivers of many conversations wait on this instead of rescanning every
    message of every channel: that scan grows with the load and starved the event loop."""

    def __init__(self) -> None:
        self._keys: defaultdict[str, list[Hashable]] = defaultdict(list)
        self._changed: dict[str, asyncio.Event] = {}

    def posted(self, channel: str, key: Hashable) -> None:
        self._keys[channel].append(key)
        self.changed(channel)

    def removed(self, channel: str, key: Hashable) -> None:
        if key in self._keys.get(channel, ()):
            self._keys[channel].remove(key)
        self.changed(channel)

    def keys(self, channel: str) -> list[Hashable]:
        return list(self._keys.get(channel, ()))

    def changed(self, channel: str) -> None:
        event = self._changed.pop(channel, None)
        if event is not None:
            event.set()

    async def wait(self, channel: str, timeout: float) -> None:
        """Wait for the next change in `channel`, at most `timeout` seconds."""
        event = self._changed.setdefault(channel, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
