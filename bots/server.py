"""The bot's one HTTP server: platform webhooks (mounted by the adapters), /healthz, /readyz."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiohttp import web

from adapters.base import Adapter
from bots.assembly import Core
from bots.topology import Topology

log = logging.getLogger(__name__)


class HttpServer:
    """aiohttp app runner with the health endpoints added."""

    def __init__(
        self,
        app: web.Application,
        core: Core,
        adapters: Sequence[Adapter],
        topology: Topology | None = None,
    ) -> None:
        self.app = app
        self.core = core
        self.adapters = adapters
        self.topology = topology  # set by `--role ingress|worker` once the role runs
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048)  # bursts of webhooks
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("http server listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def status(self) -> dict[str, object]:
        started = time.perf_counter()
        redis_up = await self.core.store.ping()
        if redis_up:
            self.core.metrics.redis_seconds.observe(time.perf_counter() - started)
        status: dict[str, object] = {
            "redis": "up" if redis_up else "down",
            "platforms": {a.name: ("ready" if a.ready() else "starting") for a in self.adapters},
            "in_flight": self.core.inflight.running,
        }
        if self.core.mcp is not None:  # readiness does not depend on them: the bot answers
            status["mcp"] = self.core.mcp.health()
        if self.topology is not None:
            status.update(await self.topology.status())
        return status

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: 200 whenever the process serves, with the status of its parts."""
        return web.json_response({"status": "ok", **await self.status()})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition; samples the Redis round trip first."""
        await self.status()
        body, content_type = self.core.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: 200 only when Redis answers and every platform is connected."""
        status = await self.status()
        platforms = status["platforms"]
        ready = (
            status["redis"] == "up"
            and all(
                state == "ready"
                for state in (platforms.values() if isinstance(platforms, dict) else [])
            )
            and (self.topology is None or self.topology.ready())
        )
        return web.json_response(
            {"status": "ready" if ready else "not ready", **status}, status=200 if ready else 503
        )
