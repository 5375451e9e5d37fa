"""The web adapter running over the real core on a local port, for the API and browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from aiohttp import web

from adapters.web import WebAdapter
from bots.assembly import build_core
from core.config import Secrets, Settings
from core.protocols import Handler
from tests.fakes.common import serve_locally


@asynccontextmanager
async def running_web(
    settings: Settings,
    secrets: Secrets,
    redis: Any,
    *,
    jwt_secret: str | None,
    wrap: Callable[[Handler], Handler] | None = None,
) -> AsyncIterator[tuple[WebAdapter, int]]:
    """(the adapter, its port): `jwt_secret` as `chatbot run` mounts it, None as `chatbot
    web` does (no token). `wrap` puts a test's handler in front of the core's (one that
    records what the adapter hands the core, or sends a file). Presses of Approve and Deny go
    to the core's `decide`, as in production."""
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        handler = wrap(core.handler) if wrap is not None else core.handler
        adapter = WebAdapter(
            handler, core.store, settings, jwt_secret=jwt_secret, on_decision=core.chat.decide
        )
        app = web.Application()
        adapter.mount(app)
        await adapter.start()
        runner, port = await serve_locally(app)
        try:
            yield adapter, port
        finally:
            await adapter.stop()
            await runner.cleanup()
            await adapter.close()
