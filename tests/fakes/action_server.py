"""A local HTTP action server (a Rasa-style action endpoint) on 127.0.0.1 port 0.

It receives the bot's `{intent, entities, text, conversation, user}` POSTs, records them,
and answers by route: `/weather` says the weather of `entities.city`; `/fail` answers 500;
`/slow` waits `slow_seconds` first; `/garbage` answers something that is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.common import serve_locally


@dataclass
class Hit:
    """One request the action server received."""

    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeActions:
    """Start with `async with FakeActions() as actions:`; URLs are `actions.url("/weather")`."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.slow_seconds = 5.0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [hit.body for hit in self.hits if hit.path == path]

    async def __aenter__(self) -> FakeActions:
        app = web.Application()
        app.router.add_post("/weather", self._weather)
        app.router.add_post("/fail", self._fail)
        app.router.add_post("/slow", self._slow)
        app.router.add_post("/garbage", self._garbage)
        self._runner, self.port = await serve_locally(app, shutdown_timeout=0.2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.hits.append(Hit(request.path, body))
        return body

    async def _weather(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        city = body.get("entities", {}).get("city", "nowhere")
        return web.json_response({"text": f"It is sunny and 21 °C in {city}.", "temp_c": 21})

    async def _fail(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"error": "backend down"}, status=500)

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), self.slow_seconds)
        return web.json_response({"text": "finally"})

    async def _garbage(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="<html>oops</html>", content_type="text/html")
