"""The assembly of the core: settings and secrets in; the store, the model, the router and the
intake out, as one `Core` that the adapters, the HTTP server and recovery are given.

`build_core` enters everything with a lifetime on the caller's AsyncExitStack.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

import httpx
from redis.asyncio import Redis, RedisCluster

from bots.metrics import MeteredLLM, Metrics
from bots.redis_conn import open_redis
from core.config import ConfigError, Secrets, Settings
from core.conversation.chat import ChatTurn, Features
from core.conversation.exchange import Exchange, Policies
from core.conversation.intake import Intake
from core.conversation.memory import Summarizer
from core.llm.moderation import Moderator
from core.llm.openai_chat import OpenAIChat, make_client
from core.llm.openai_media import OpenAIMedia
from core.llm.tokens import TokenCounter
from core.media.drawing import Drawing
from core.media.reader import MediaReader
from core.media.speech import Speaker
from core.model import ContextKey
from core.plugins import Plugins, load_plugins
from core.policies.cache import AnswerCache
from core.policies.limits import AccessControl, RateLimiter, TokenBudget
from core.policies.masking import Masker
from core.policies.usage import UsageBook
from core.protocols import Handler
from core.routing.commands import BuiltinCommands
from core.routing.intents import IntentMatcher, IntentTurn, gather_intents
from core.routing.middleware import Guarded, InFlight
from core.routing.mydata import MyData
from core.routing.router import Route, Router, command
from core.routing.sanitize import Sanitized
from core.sections import BUILTIN_TOOLS
from core.storage import AnswerJournal, StateStore
from core.tools.actions import HttpActions
from core.tools.approvals import Approvals
from core.tools.builtin import calculator_tool, current_time_tool
from core.tools.fetch_url import fetch_url_tool
from core.tools.mcp import MCPServers, plan_servers
from core.tools.toolbox import Toolbox
from core.tools.web_search import search_config_problem, search_provider, web_search_tool
from stores.limits import StoreLimits
from stores.memory import MemoryStore
from stores.redis.keys import KeyBuilder
from stores.redis.store import RedisStore

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 3.0  # seconds for cancelled answers to say they were interrupted


@dataclass
class Core:
    """The platform-free brain, as the adapters and the HTTP server see it."""

    settings: Settings
    secrets: Secrets
    store: StateStore
    llm: OpenAIChat
    router: Router
    commands: BuiltinCommands
    chat: ChatTurn
    inflight: InFlight
    handler: Handler  # guarded and tracked: what adapters call
    metrics: Metrics = field(default_factory=Metrics)
    extras: dict[str, object] = field(default_factory=dict)
    plugins: Plugins | None = None
    intents: IntentTurn | None = None
    toolbox: Toolbox | None = None
    memory: Summarizer | None = None
    usage: UsageBook | None = None
    journal: AnswerJournal | None = None
    intake: Intake | None = None
    mcp: MCPServers | None = None


def check_tools(settings: Settings, plugins: Plugins) -> None:
    """Every name in `tools.enabled` is a built-in, an action or a plugin tool."""
    known = {*BUILTIN_TOOLS, *settings.actions, *plugins.tools}
    servers = tuple(f"{server}__" for server in settings.mcp.servers)
    for name in settings.tools.enabled:
        if name not in known and not name.startswith(servers):  # MCP: listed at start
            raise ConfigError(
                f"tools.enabled: unknown tool {name!r} (known: {', '.join(sorted(known))}; "
                "a plugin's tools need the plugin listed under `plugins`; an MCP server's "
                "are `<server>__<tool>` or `<server>__*` with the server under `mcp.servers`)"
            )
    if "web_search" in settings.tools.enabled:
        problem = search_config_problem(settings.tools.search, os.environ)
        if problem:
            raise ConfigError(problem)


def build_toolbox(
    settings: Settings,
    actions: HttpActions | None,
    plugins: Plugins,
    drawing: Drawing | None = None,
) -> Toolbox:
    """The tools named in `tools.enabled` (checked by `check_tools`)."""
    toolbox = Toolbox(timeout=settings.tools.timeout)
    mcp_prefixes = tuple(f"{server}__" for server in settings.mcp.servers)
    for name in settings.tools.enabled:
        if name == "current_time":
            toolbox.tools[name] = current_time_tool(settings.tools.timezone)
        elif name == "calculator":
            toolbox.tools[name] = calculator_tool()
        elif name == "generate_image":
            if drawing is not None:
                toolbox.tools[name] = drawing.as_tool()
        elif name == "fetch_url":
            toolbox.tools[name] = fetch_url_tool(settings.tools.fetch)
        elif name == "web_search":
            search = settings.tools.search
            toolbox.tools[name] = web_search_tool(search, search_provider(search, os.environ))
        elif name.startswith(mcp_prefixes):
            continue  # MCPServers adds these while their server is up
        elif actions is not None and name in actions.actions:
            toolbox.tools[name] = actions.tool(name)
        else:
            toolbox.tools[name] = plugins.tools[name]
    return toolbox


def needs_approval(name: str, settings: Settings) -> bool:
    """`tools.approve` names or patterns, an action's `approve`, an MCP server's `approve`."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in settings.tools.approve):
        return True
    action = settings.actions.get(name)
    if action is not None:
        return action.approve
    server, _, tool = name.partition("__")
    return bool(tool) and server in settings.mcp.servers and settings.mcp.servers[server].approve


def mark_approvals(toolbox: Toolbox, settings: Settings) -> Toolbox:
    for name, tool in toolbox.tools.items():
        if needs_approval(name, settings):
            toolbox.tools[name] = replace(tool, approve=True)
    return toolbox


async def open_store(
    stack: AsyncExitStack,
    settings: Settings,
    secrets: Secrets,
    *,
    redis: Redis | RedisCluster | None = None,
    in_memory: bool = False,
    on_round_trip: Callable[[], None] | None = None,
    worker: bool = False,
) -> StateStore:
    """The store the bot runs on: memory, or Redis (the given client, else `open_redis`)."""
    limits = StoreLimits(
        max_turns=settings.context.max_turns,
        ttl_seconds=settings.context.ttl_seconds,
        lock_ttl=settings.redis.lock_ttl,
        lock_wait=settings.redis.lock_wait,
        dedupe_ttl=settings.redis.dedupe_ttl,
        profile_ttl=settings.privacy.profile_ttl_days * 86400,
        pending_ttl=settings.redis.dedupe_ttl if worker else None,
    )
    if in_memory:
        return MemoryStore(limits=limits)
    description = "given client"
    if redis is None:
        redis, description = await open_redis(stack, settings, secrets)
    return RedisStore(
        redis,
        KeyBuilder(settings.redis.key_prefix),
        limits,
        describe=description,
        on_round_trip=on_round_trip,
        heartbeat_ttl=settings.redis.heartbeat_ttl,
    )


async def build_core(
    stack: AsyncExitStack,
    settings: Settings,
    secrets: Secrets,
    *,
    redis: Redis | RedisCluster | None = None,
    on_round_trip: Callable[[], None] | None = None,
    in_memory: bool = False,
    worker: bool = False,
) -> Core:
    """Load the plugins, open Redis (`in_memory`: no Redis, state in this process) and the model
    client, and assemble the routing table. A `worker`'s messages come from a stream, which
    keeps them until they are answered: no journal, and a turn cut short by shutdown keeps
    its place for the next owner.

    Raises PluginError (a plugin failed) or ConfigError (a tool name is unknown) before any
    connection is opened.
    """
    plugins = load_plugins(settings.plugins)
    intents = gather_intents(settings, plugins)
    check_tools(settings, plugins)
    plan_servers(settings.mcp)  # ConfigError naming mcp.servers.<name>.<key>, before any start
    store = await open_store(
        stack,
        settings,
        secrets,
        redis=redis,
        in_memory=in_memory,
        on_round_trip=on_round_trip,
        worker=worker,
    )
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
    counter = TokenCounter(settings.context.tokenizer)
    usage = UsageBook(settings.limits.timezone, month_ttl=settings.privacy.profile_ttl_days * 86400)
    limiter = RateLimiter(settings.limits)
    cache = AnswerCache(settings.cache) if settings.cache.enabled else None
    memory = Summarizer(
        store, metered, settings.memory, budget=settings.context.token_budget, counter=counter
    )
    stack.push_async_callback(memory.close)
    journal = store.journal
    masker = Masker(settings.privacy)
    moderator = Moderator(client, settings.moderation) if settings.moderation.enabled else None
    media_model = OpenAIMedia(client, settings.llm)
    image_ttl = int(settings.media.image_ttl_hours * 3600)
    policies = Policies(
        limiter=limiter if limiter.enabled else None,
        budget=TokenBudget(usage, settings.limits) if settings.limits.daily_tokens else None,
        usage=usage,
        journal=not worker,
        claims=True,
        masker=masker if masker.enabled else None,
        image_ttl=image_ttl,
    )
    drawing = Drawing(media_model, store, Exchange(store, policies), settings, moderator=moderator)
    toolbox = mark_approvals(build_toolbox(settings, actions, plugins, drawing), settings)
    mcp = None
    if settings.mcp.servers:
        mcp = MCPServers(
            settings.mcp,
            toolbox,
            enabled=settings.tools.enabled,
            approve=lambda name: needs_approval(name, settings),
        )
        await stack.enter_async_context(mcp)  # starts the supervisors; stops them on exit
    features = Features(
        toolbox=toolbox if (toolbox or settings.mcp.servers) else None,  # MCP tools come later
        usage=usage,
        limiter=policies.limiter,
        budget=policies.budget,
        moderator=moderator,
        cache=cache,
        memory=memory if settings.memory.summarize else None,
        journal=not worker,
        claims=True,
        masker=policies.masker,
        media=MediaReader(
            settings.media,
            media_model,
            counter,
            transcription_model=settings.llm.transcription_model,
            document_tokens=settings.media.document_tokens or settings.context.token_budget // 2,
        ),
        speaker=Speaker(
            media_model,
            model=settings.llm.tts_model,
            voice=settings.media.tts_voice,
            max_chars=settings.media.max_speech_chars,
        ),
        vision_model=settings.llm.vision_model,
        history_images=settings.media.history_images,
        image_ttl=image_ttl,
        approvals=Approvals(store, settings),
    )
    chat = ChatTurn(store, metered, settings, counter, features)
    intent_turn = IntentTurn(
        IntentMatcher(intents),
        store=store,
        settings=settings,
        actions=actions,
        handlers=plugins.handlers,
        cache=cache,
        limiter=features.limiter,
        claims=True,
        masker=features.masker,
    )
    commands = BuiltinCommands(
        store, settings, usage=usage, plugins=plugins, intents=intents, tools=list(toolbox.tools)
    )
    routes = [
        *commands.routes(),
        Route("image", command("image"), drawing.command),
        MyData(store).route(),
        commands.unknown_route(),
        *intent_turn.routes(),
    ]
    router = Router(routes, fallback=chat)
    guarded = AccessControl(router, settings)  # allow/deny lists before any route
    sanitized = Sanitized(metrics.handler(guarded), settings.input.max_chars)

    async def has_history(key: ContextKey) -> bool:
        return bool((await store.load(key)).history)

    intake = Intake(
        Guarded(sanitized, log_text=settings.input.log_user_text, masker=features.masker),
        conversation=chat.conversation_key,
        deduper=store,
        has_history=has_history,
        max_in_flight=settings.limits.max_in_flight,
        max_wait=settings.redis.lock_wait,
        owner=journal.owner,
        keep_cancelled=worker,
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
        plugins=plugins,
        intents=intent_turn,
        toolbox=toolbox,
        memory=memory,
        usage=usage,
        journal=journal,
        intake=intake,
        mcp=mcp,
    )
