"""`chatbot run`: the core (`bots/assembly.py`), every enabled platform and the one HTTP
server, started and stopped as one.

`--role` splits the work over processes: `all` (the default) takes messages and answers them;
`ingress` holds the platforms' connections and appends each message to Redis Streams
(`bots/ingress.py`); `worker` reads them and answers through the platforms' HTTP APIs
(`bots/worker.py`).

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

from adapters.base import Adapter, Sends
from bots.assembly import Core, build_core
from bots.ingress import Ingress
from bots.platforms import build_adapters
from bots.recovery import recover_orphans
from bots.server import HttpServer
from bots.topology import Topology
from bots.worker import Worker
from core.config import ConfigError, Secrets, Settings
from stores.redis.keys import KeyBuilder
from stores.redis.streams import RedisStreams

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 3.0  # seconds for cancelled answers to say they were interrupted
ROLES = ("all", "ingress", "worker")


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
        role: str = "all",
    ):
        self.settings = settings
        self.secrets = secrets
        self._redis = redis
        self._web_local = web_local  # `chatbot web`: the web channel alone
        self.role = role
        self.ingress: Ingress | None = None
        self.worker: Worker | None = None
        self.streams: RedisStreams | None = None
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
            core = await build_core(self._stack, self.settings, self.secrets, redis=self._redis,
                                    worker=self.role == "worker")  # fmt: skip
            self.core = core
            handler = core.handler
            if self.role != "all":
                self.streams = self._streams(core)
            if (
                self.role != "all"
                and self.settings.platforms.web.enabled
                and (self.secrets.web_jwt_secret)
            ):
                log.warning(
                    "the web channel is served by --role all processes only (its answers "
                    "stream over the client's own connection); not here"
                )
            if self.role == "ingress":
                assert self.streams is not None
                handler = self.ingress = Ingress(self.streams, core.chat.conversation_key)
            self.adapters = build_adapters(core, web_local=self._web_local, handler=handler,
                                           web=self.role == "all")  # fmt: skip
            app = web.Application(client_max_size=1024**2)
            if self.role != "worker":  # a worker takes no events
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
                if self.role == "worker":
                    await sends(adapter).start_sending()
                else:
                    await adapter.start()
                log.info("platform %s started%s", adapter.name,
                         " (sending only)" if self.role == "worker" else "")  # fmt: skip
            if self.role == "worker":
                senders = {adapter.name: sends(adapter) for adapter in self.adapters}
                assert self.streams is not None
                owner = core.journal.owner if core.journal else ""
                self.worker = Worker(
                    self.settings, self.streams, core.store, core.handler,
                    core.chat.conversation_key, senders, worker_id=owner,
                )  # fmt: skip
                self._stack.push_async_callback(self.worker.close)
                await self.worker.start()
                log.info("worker %s reading %d partition(s) of %d", self.worker.id,
                         len(self.worker.owned), self.streams.partitions)  # fmt: skip
            if self.streams is not None:
                topology = Topology(self.role, self.streams, ingress=self.ingress,
                                    worker=self.worker)  # fmt: skip
                topology.register(core.metrics.registry)
                self.server.topology = topology
            if core.journal is not None and self.role == "all":
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

    def _streams(self, core: Core) -> RedisStreams:
        """The partitions, on the store's Redis (a role other than `all` needs a shared one)."""
        redis = getattr(core.store, "redis", None)
        shared = self._redis is not None or self.secrets.redis_url or self.settings.redis.sentinels
        if redis is None or not shared:
            raise ConfigError(
                f"--role {self.role} needs a Redis that every process shares: set REDIS_URL "
                "(or redis.sentinels in the config file)"
            )
        return RedisStreams(
            redis,
            KeyBuilder(self.settings.redis.key_prefix),
            partitions=self.settings.workers.partitions,
            dedupe_ttl=self.settings.redis.dedupe_ttl,
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
        if self.worker is not None:
            await self.worker.stop_reading()
        if self.ingress is not None and not await self.ingress.drain(grace):
            log.warning("%d message(s) not appended at shutdown", self.ingress.running)
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


def sends(adapter: Adapter) -> Sends:
    """The adapter as a worker runs it (every platform adapter but the web channel's)."""
    if not isinstance(adapter, Sends):
        raise ConfigError(f"the {adapter.name} platform cannot run in a worker")
    return adapter
