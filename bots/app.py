"""The composition root: settings and secrets in; store, model, router and adapters out.

Everything with a lifetime is entered on one AsyncExitStack, so `stop()` closes it all in
reverse order. Shutdown drains the answers in flight before the clients close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx
from aiohttp import web
from redis.asyncio import Redis

from adapters.base import Adapter
from bots.metrics import MeteredLLM, Metrics
from bots.recovery import recover_orphans
from bots.redis_conn import open_redis
from bots.server import HttpServer
from core.actions import HttpActions
from core.builtin_tools import calculator_tool, current_time_tool
from core.cache import AnswerCache
from core.chat import ChatTurn, Features
from core.commands import BuiltinCommands
from core.config import ConfigError, Secrets, Settings
from core.context import RedisStore, StoreLimits
from core.intake import Intake
from core.intents import IntentMatcher, IntentTurn, gather_intents
from core.journal import Journal
from core.keys import KeyBuilder
from core.limits import AccessControl, RateLimiter, TokenBudget
from core.llm import OpenAIChat, make_client
from core.memory import Summarizer
from core.middleware import Guarded, InFlight
from core.model import ContextKey
from core.moderation import Moderator
from core.plugins import Plugins, load_plugins
from core.protocols import Handler
from core.router import Router
from core.sanitize import Sanitized
from core.sections import BUILTIN_TOOLS
from core.tokens import TokenCounter
from core.tools import Toolbox
from core.usage import UsageBook

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 3.0  # seconds for cancelled answers to say they were interrupted


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
    plugins: Plugins | None = None
    intents: IntentTurn | None = None
    toolbox: Toolbox | None = None
    memory: Summarizer | None = None
    usage: UsageBook | None = None
    journal: Journal | None = None
    intake: Intake | None = None


def check_tools(settings: Settings, plugins: Plugins) -> None:
    """Every name in `tools.enabled` is a built-in, an action or a plugin tool."""
    known = {*BUILTIN_TOOLS, *settings.actions, *plugins.tools}
    for name in settings.tools.enabled:
        if name not in known:
            raise ConfigError(
                f"tools.enabled: unknown tool {name!r} (known: {', '.join(sorted(known))}; "
                "a plugin's tools need the plugin listed under `plugins`)"
            )


def build_toolbox(settings: Settings, actions: HttpActions | None, plugins: Plugins) -> Toolbox:
    """The tools named in `tools.enabled` (checked by `check_tools`)."""
    toolbox = Toolbox(timeout=settings.tools.timeout)
    for name in settings.tools.enabled:
        if name == "current_time":
            toolbox.tools[name] = current_time_tool(settings.tools.timezone)
        elif name == "calculator":
            toolbox.tools[name] = calculator_tool()
        elif actions is not None and name in actions.actions:
            toolbox.tools[name] = actions.tool(name)
        else:
            toolbox.tools[name] = plugins.tools[name]
    return toolbox


async def build_core(
    stack: AsyncExitStack,
    settings: Settings,
    secrets: Secrets,
    *,
    redis: Redis | None = None,
    on_round_trip: Callable[[], None] | None = None,
) -> Core:
    """Load the plugins, open Redis and the model client, and assemble the routing table.

    Raises PluginError (a plugin failed) or ConfigError (a tool name is unknown) before any
    connection is opened.
    """
    plugins = load_plugins(settings.plugins)
    intents = gather_intents(settings, plugins)
    check_tools(settings, plugins)
    description = "given client"
    if redis is None:
        redis, description = await open_redis(stack, settings, secrets)
    limits = StoreLimits(
        max_turns=settings.context.max_turns,
        ttl_seconds=settings.context.ttl_seconds,
        lock_ttl=settings.redis.lock_ttl,
        lock_wait=settings.redis.lock_wait,
        dedupe_ttl=settings.redis.dedupe_ttl,
    )
    keys = KeyBuilder(settings.redis.key_prefix)
    store = RedisStore(redis, keys, limits, describe=description, on_round_trip=on_round_trip)
    api_key = secrets.openai_api_key.get_secret_value() if secrets.openai_api_key else None
    client = make_client(settings.llm, api_key=api_key, base_url=secrets.openai_base_url)
    stack.push_async_callback(client.close)
    metrics = Metrics()
    llm = OpenAIChat(client, settings.llm, on_usage=metrics.usage)
    metered = MeteredLLM(llm, metrics)
    actions = None
    if settings.actions:
        http = await stack.enter_async_context(httpx.AsyncClient(follow_redirects=False))
        actions = HttpActions(http, settings.actions)
    toolbox = build_toolbox(settings, actions, plugins)
    counter = TokenCounter(settings.context.tokenizer)
    usage = UsageBook(keys, settings.limits.timezone, settings.context.ttl_seconds)
    limiter = RateLimiter(keys, settings.limits)
    cache = AnswerCache(keys, settings.cache) if settings.cache.enabled else None
    memory = Summarizer(
        store, metered, keys, settings.memory, budget=settings.context.token_budget, counter=counter
    )
    stack.push_async_callback(memory.close)
    journal = Journal(redis, settings.redis.key_prefix, heartbeat_ttl=settings.redis.heartbeat_ttl)
    features = Features(
        keys=keys,
        toolbox=toolbox or None,
        usage=usage,
        limiter=limiter if limiter.enabled else None,
        budget=TokenBudget(usage, settings.limits) if settings.limits.daily_tokens else None,
        moderator=Moderator(client, settings.moderation) if settings.moderation.enabled else None,
        cache=cache,
        memory=memory if settings.memory.summarize else None,
        journal=journal,
        deliveries=store,
    )
    chat = ChatTurn(store, metered, settings, counter, features)
    intent_turn = IntentTurn(
        IntentMatcher(intents),
        store=store,
        settings=settings,
        keys=keys,
        actions=actions,
        handlers=plugins.handlers,
        cache=cache,
        limiter=features.limiter,
    )
    commands = BuiltinCommands(
        store, settings, usage=usage, plugins=plugins, intents=intents, tools=list(toolbox.tools)
    )
    routes = [*commands.routes(), commands.unknown_route(), *intent_turn.routes()]
    router = Router(routes, fallback=chat)
    guarded = AccessControl(router, settings)  # allow/deny lists before any route
    sanitized = Sanitized(metrics.handler(guarded), settings.input.max_chars)

    async def has_history(key: ContextKey) -> bool:
        return bool((await store.load(key)).history)

    intake = Intake(
        Guarded(sanitized, log_text=settings.input.log_user_text),
        conversation=chat.conversation_key,
        deduper=store,
        has_history=has_history,
        max_in_flight=settings.limits.max_in_flight,
        max_wait=settings.redis.lock_wait,
        owner=journal.owner,
    )
    metrics.watch_intake(intake)
    inflight = InFlight(intake)
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
        plugins=plugins,
        intents=intent_turn,
        toolbox=toolbox,
        memory=memory,
        usage=usage,
        journal=journal,
        intake=intake,
    )


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, SDK clients, settings: kept for the life
    of the process) out of the garbage collector's reach. Full collections otherwise walk them
    all and paused the loop for 57-111 ms under load (`python -m bench`, scenario d)."""
    gc.collect()
    gc.freeze()


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
        self.recovery: asyncio.Task[None] | None = None

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
                "no platform credentials found: set SLACK_*, TELEGRAM_* or DISCORD_* variables "
                "(see .env.example); serving /healthz only"
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
