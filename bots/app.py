"""`chatbot run`: the core (`bots/assembly.py`), every enabled platform and the one HTTP
server, started and stopped as one.

Everything with a lifetime is entered on one AsyncExitStack, so `stop()` closes it all in
reverse order. Shutdown drains the answers in flight before the clients close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import AsyncExitStack

from aiohttp import web
from redis.asyncio import Redis

from adapters.base import Adapter
from bots.assembly import Core, build_core
from bots.platforms import build_adapters
from bots.recovery import recover_orphans
from bots.server import HttpServer
from core.config import Secrets, Settings

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 3.0  # seconds for cancelled answers to say they were interrupted


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, SDK clients, settings: kept for the life
    of the process) out of the garbage collector's reach. Full collections otherwise walk them
    all and paused the loop for 57-111 ms under load (`python -m bench`, scenario d)."""
    gc.collect()
    gc.freeze()


class BotApp:
    """`chatbot run`: the core, every enabled platform, and the one HTTP server."""

    def __init__(
        self,
        settings: Settings,
        secrets: Secrets,
        *,
        redis: Redis | None = None,
        web_local: bool = False,
    ):
        self.settings = settings
        self.secrets = secrets
        self._redis = redis
        self._web_local = web_local  # `chatbot web`: the web channel alone
        self._stack = AsyncExitStack()
        self.core: Core | None = None
        self.adapters: list[Adapter] = []
        self.server: HttpServer | None = None
        self.recovery: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port the HTTP server listens on (useful with port 0)."""
        assert self.server is not None, "not started"
        return self.server.port

    async def start(self) -> None:
        try:
            core = await build_core(self._stack, self.settings, self.secrets, redis=self._redis)
            self.core = core
            self.adapters = build_adapters(core, web_local=self._web_local)
            app = web.Application(client_max_size=1024**2)
            for adapter in self.adapters:
                adapter.mount(app)
            self.server = HttpServer(app, core, self.adapters)
            await self.server.start(self.settings.server.host, self.settings.server.port)
            self._stack.push_async_callback(self.server.stop)
            if core.journal is not None:  # before any platform: its first answers are kept
                await core.journal.start()
                self._stack.push_async_callback(core.journal.stop)
            for adapter in self.adapters:
                # Closed even when its start fails or is cancelled half way (a SIGTERM).
                self._stack.push_async_callback(adapter.close)
                await adapter.start()
                log.info("platform %s started", adapter.name)
            if core.journal is not None:
                self.recovery = asyncio.create_task(self._recover_forever(core))
        except BaseException:
            # A platform that failed, or a SIGTERM, while others already answer: the answers
            # in flight finish (or are journaled) as at any other shutdown.
            await self.stop()
            raise
        if not self.adapters:
            log.warning(
                "no platform credentials found: set SLACK_*, TELEGRAM_*, DISCORD_* or "
                "WEB_JWT_SECRET variables (see .env.example); serving /healthz only"
            )

    async def _recover_forever(self, core: Core) -> None:
        """Take over the work of crashed processes: at start, then every heartbeat period."""
        while True:
            try:
                await recover_orphans(core, self.adapters)
            except Exception:
                log.exception("recovering orphaned messages failed")
            await asyncio.sleep(self.settings.redis.heartbeat_ttl)

    async def stop(self, grace: float | None = None) -> None:
        """Stop the intake, let answers in flight finish (up to `grace`), close everything."""
        grace = self.settings.server.shutdown_grace if grace is None else grace
        if self.recovery is not None:
            self.recovery.cancel()
        for adapter in self.adapters:
            try:
                await adapter.stop()
            except Exception as exc:
                log.warning("stopping %s failed: %s", adapter.name, type(exc).__name__)
        if self.core is not None:
            running = self.core.inflight.running
            if running:
                log.info("waiting up to %.1fs for %d answer(s) in flight", grace, running)
            if not await self.core.inflight.drain(grace):
                log.warning(
                    "%d answer(s) still running at shutdown: interrupted, to be answered anew "
                    "after the restart",
                    self.core.inflight.running,
                )
                await self.core.inflight.cancel(INTERRUPT_GRACE)
        await self._stack.aclose()
