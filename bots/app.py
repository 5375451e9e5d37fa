"""The composition root: settings and secrets in; store, model, router and adapters out.

Everything with a lifetime is entered on one AsyncExitStack, so `stop()` closes it all in
reverse order. Shutdown drains the answers in flight before the clients close.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from aiohttp import web
from redis.asyncio import Redis

from adapters.base import Adapter
from bots.metrics import MeteredLLM, Metrics
from bots.redis_conn import open_redis
from bots.server import HttpServer
from core.chat import ChatTurn
from core.commands import BuiltinCommands
from core.config import Secrets, Settings
from core.context import RedisStore, StoreLimits
from core.keys import KeyBuilder
from core.llm import OpenAIChat, make_client
from core.middleware import Guarded, InFlight
from core.protocols import Handler
from core.router import Router
from core.sanitize import Sanitized
from core.tokens import TokenCounter

log = logging.getLogger(__name__)


@dataclass
class Core:
    """The platform-free brain, as the adapters and the HTTP server see it."""

    settings: Settings
    secrets: Secrets
    store: RedisStore
    llm: OpenAIChat
    router: Router
    commands: BuiltinCommands
    chat: ChatTurn
    inflight: InFlight
    handler: Handler  # guarded and tracked: what adapters call
    metrics: Metrics = field(default_factory=Metrics)
    redis_description: str = ""
    extras: dict[str, object] = field(default_factory=dict)


async def build_core(
    stack: AsyncExitStack, settings: Settings, secrets: Secrets, *, redis: Redis | None = None
) -> Core:
    """Open Redis and the model client, and assemble the routing table."""
    description = "given client"
    if redis is None:
        redis_url = secrets.redis_url.get_secret_value() if secrets.redis_url else None
        redis, description = await open_redis(
            stack, redis_url, settings.data_dir, settings.redis.socket_timeout
        )
    limits = StoreLimits(
        max_turns=settings.context.max_turns,
        ttl_seconds=settings.context.ttl_seconds,
        lock_ttl=settings.redis.lock_ttl,
        lock_wait=settings.redis.lock_wait,
        dedupe_ttl=settings.redis.dedupe_ttl,
    )
    store = RedisStore(redis, KeyBuilder(settings.redis.key_prefix), limits, describe=description)
    api_key = secrets.openai_api_key.get_secret_value() if secrets.openai_api_key else None
    client = make_client(settings.llm, api_key=api_key, base_url=secrets.openai_base_url)
    stack.push_async_callback(client.close)
    metrics = Metrics()
    llm = OpenAIChat(client, settings.llm, on_usage=metrics.usage)
    chat = ChatTurn(
        store, MeteredLLM(llm, metrics), settings, TokenCounter(settings.context.tokenizer)
    )
    commands = BuiltinCommands(store, settings)
    router = Router([*commands.routes(), commands.unknown_route()], fallback=chat)
    sanitized = Sanitized(metrics.handler(router), settings.input.max_chars)
    inflight = InFlight(Guarded(sanitized, log_text=settings.input.log_user_text))
    return Core(
        settings=settings,
        secrets=secrets,
        store=store,
        llm=llm,
        router=router,
        commands=commands,
        chat=chat,
        inflight=inflight,
        handler=inflight,
        metrics=metrics,
        redis_description=description,
    )


class BotApp:
    """`chatbot run`: the core, every enabled platform, and the one HTTP server."""

    def __init__(self, settings: Settings, secrets: Secrets, *, redis: Redis | None = None):
        self.settings = settings
        self.secrets = secrets
        self._redis = redis
        self._stack = AsyncExitStack()
        self.core: Core | None = None
        self.adapters: list[Adapter] = []
        self.server: HttpServer | None = None

    @property
    def port(self) -> int:
        """The port the HTTP server listens on (useful with port 0)."""
        assert self.server is not None, "not started"
        return self.server.port

    async def start(self) -> None:
        from bots.platforms import build_adapters

        try:
            core = await build_core(self._stack, self.settings, self.secrets, redis=self._redis)
            self.core = core
            self.adapters = build_adapters(core)
            app = web.Application(client_max_size=1024**2)
            for adapter in self.adapters:
                adapter.mount(app)
            self.server = HttpServer(app, core, self.adapters)
            await self.server.start(self.settings.server.host, self.settings.server.port)
            self._stack.push_async_callback(self.server.stop)
            for adapter in self.adapters:
                await adapter.start()
                self._stack.push_async_callback(adapter.close)
                log.info("platform %s started", adapter.name)
        except BaseException:
            await self._stack.aclose()
            raise
        if not self.adapters:
            log.warning(
                "no platform credentials found: set SLACK_*, TELEGRAM_* or DISCORD_* variables "
                "(see .env.example); serving /healthz only"
            )

    async def stop(self, grace: float | None = None) -> None:
        """Stop the intake, let answers in flight finish (up to `grace`), close everything."""
        grace = self.settings.server.shutdown_grace if grace is None else grace
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
                log.warning("%d answer(s) still running at shutdown", self.core.inflight.running)
        await self._stack.aclose()
