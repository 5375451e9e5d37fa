"""The Discord adapter (discord.py 2.x): mentions, DMs, threads and slash commands.

Every message the bot sends has `AllowedMentions.none()`, so nothing the model writes can
ping @everyone, @here, a role or a user. Slash commands are deferred at once and the answer
edits the original response, continuing in follow-ups; an interaction token lives 15
minutes, so a longer answer continues as normal channel messages. Files go the same
ways: a reply in the channel, or the interaction's follow-up (discord_responders.py), and so
do approval requests, whose Approve and Deny presses come back as component interactions
(`on_interaction`, discord_approvals.py).
With `platforms.discord.shard_count` set the client is discord.py's `AutoShardedClient`
over this process's `shard_ids` (discord_shards.py), so several processes split the guilds.
`DISCORD_API_URL` and `DISCORD_GATEWAY_URL` set discord.py's documented base URLs
(`Route.BASE`, `DiscordWebSocket.DEFAULT_GATEWAY`) for proxies and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import discord
import yarl
from aiohttp import web
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.base import AdapterStartError
from adapters.discord_approvals import NO_PINGS, UNHANDLED, ButtonReply, decision_of, parse
from adapters.discord_commands import CheckedTree
from adapters.discord_events import conversation_key, to_message
from adapters.discord_media import make_fetcher
from adapters.discord_responders import LIMIT as LIMIT
from adapters.discord_responders import (
    ChannelResponder,
    InteractionResponder,
    ReplayedInteraction,
)
from adapters.discord_shards import check_shard_count, describe, make_client, shards_up
from adapters.supervisor import Supervisor
from core.config import DiscordSettings, Settings
from core.model import Command, Message, User
from core.protocols import DecisionHandler, Handler
from core.storage import Deduper

log = logging.getLogger(__name__)

ON_OFF = [app_commands.Choice(name=v, value=v) for v in ("on", "off")]


class DiscordAdapter:
    """The gateway client and the slash command tree, handing messages to the core."""

    name = "discord"

    def __init__(
        self,
        handler: Handler,
        deduper: Deduper,
        settings: Settings,
        *,
        token: str,
        api_url: str | None = None,
        gateway_url: str | None = None,
        on_intake_restart: Callable[[str], None] | None = None,
        on_decision: DecisionHandler | None = None,
    ) -> None:
        self.handler = handler
        self.deduper = deduper
        self.settings = settings
        self.platform: DiscordSettings = settings.platforms.discord
        self.token = token
        self.api_url = api_url
        self.gateway_url = gateway_url
        self.client: discord.Client | None = None
        self.tree: app_commands.CommandTree[discord.Client] | None = None
        self.on_intake_restart = on_intake_restart
        self._intake: Supervisor | None = None
        self._admins = frozenset(self.platform.admins)
        self.fetcher = make_fetcher(api_url)
        self.on_decision = on_decision
        self._decisions: set[asyncio.Task[None]] = set()
        self._sending = False  # a worker's: REST only, no gateway

    def mount(self, app: web.Application) -> None:
        return None  # everything arrives over the gateway

    def _configure_endpoints(self) -> None:
        if self.api_url:
            Route.BASE = self.api_url.rstrip("/")
        if self.gateway_url:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def _build_client(self) -> discord.Client:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = self.platform.message_content
        client = make_client(self.platform, intents, allowed_mentions=NO_PINGS)
        self.client = client
        self.tree = CheckedTree(client)  # every interaction answered, an apology at least
        self._register_commands(self.tree)
        client.event(self.on_message)
        client.event(self.on_interaction)
        return client

    async def start(self) -> None:
        self._configure_endpoints()
        client = self._build_client()
        try:
            await client.login(self.token)
        except discord.LoginFailure:
            await client.close()
            raise AdapterStartError(
                "Discord refused DISCORD_BOT_TOKEN (login: 401 Unauthorized); check the bot token"
            ) from None
        except (discord.HTTPException, OSError) as exc:
            await client.close()
            raise AdapterStartError(
                f"Discord is unreachable at start ({type(exc).__name__})"
            ) from None
        assert self.tree is not None
        await self._sync_commands(self.tree)
        await check_shard_count(client, self.platform)
        self._intake = Supervisor("discord", self._gateway, on_restart=self._restarted)
        self._intake.start()
        ready = asyncio.create_task(client.wait_until_ready())
        ended = asyncio.create_task(self._intake.ended.wait())
        done, _ = await asyncio.wait({ready, ended}, timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        ready.cancel()
        ended.cancel()
        if ready not in done:
            await self.close()
            raise AdapterStartError("Discord gateway did not become ready")
        log.info("discord: connected as %s%s", client.user, describe(self.platform))

    async def start_sending(self) -> None:
        """A worker's Discord: REST alone (logged in, no gateway); the ingress holds the
        gateway and its shards."""
        self._configure_endpoints()
        client = self._build_client()
        try:
            await client.login(self.token)
        except (discord.LoginFailure, discord.HTTPException, OSError) as exc:
            await client.close()
            raise AdapterStartError(
                f"Discord refused DISCORD_BOT_TOKEN or is unreachable ({type(exc).__name__})"
            ) from None
        self._sending = True

    async def _sync_commands(self, tree: app_commands.CommandTree[discord.Client]) -> None:
        if self.platform.guild_ids:
            for guild_id in self.platform.guild_ids:
                guild = discord.Object(id=guild_id)
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
        else:
            await tree.sync()

    async def stop(self) -> None:
        return None  # the gateway stays up so answers in flight can finish

    async def _gateway(self) -> None:
        """One run of discord.py's connect loop, which resumes by itself after network errors
        but raises out on a frame it cannot read (not JSON, an event missing its fields),
        leaving that socket open: it is closed here so the supervisor's next run starts clean.
        The sharded client instead closes itself whole on such a frame (`EventType.terminate`
        in discord.py's shard.py), so the next run builds a new one and logs it in again."""
        client = self.client
        assert client is not None
        if client.is_closed():  # a sharded client that discord.py closed
            client = self._build_client()
            await client.login(self.token)
        try:
            await client.connect(reconnect=True)
        except Exception:
            if client.ws is not None:
                with contextlib.suppress(Exception):
                    await client.ws.close(code=4000)
            raise

    def _restarted(self) -> None:
        if self.on_intake_restart is not None:
            self.on_intake_restart(self.name)

    async def close(self) -> None:
        if self._decisions:  # a press's approval is already taken: its answer gets the grace
            await asyncio.wait(set(self._decisions), timeout=self.settings.server.shutdown_grace)
        for task in list(self._decisions):
            task.cancel()
        await asyncio.gather(*self._decisions, return_exceptions=True)
        intake, self._intake = self._intake, None
        if intake is not None:
            await intake.stop()
        if self.client is not None:
            await self.client.close()
        self.client = None
        await self.fetcher.close()

    def ready(self) -> bool:
        """Connected (every shard of this process, when sharded), and the gateway loop
        running (not waiting to restart)."""
        if self._sending:
            return self.client is not None and not self.client.is_closed()
        return (
            self.client is not None
            and self.client.is_ready()
            and shards_up(self.client, self.platform)
            and self._intake is not None
            and self._intake.running
        )

    def responder_for(self, message: Message) -> ChannelResponder | InteractionResponder:
        """Where a message taken in another process (a worker's, a recovery's) is answered:
        a slash command's interaction while its token lives, else its channel."""
        assert self.client is not None
        channel_id = int(message.key.thread or message.key.channel)
        channel = self.client.get_partial_messageable(channel_id)
        extras = dict(message.extras)
        if "interaction_token" in extras:
            left = self.platform.interaction_expiry - (time.time() - float(extras["received"]))
            if left > 0:
                interaction = ReplayedInteraction(
                    self.client, int(extras["application_id"]), extras["interaction_token"], channel
                )
                return InteractionResponder(interaction, edit_interval=self._interval(),
                                            expiry=left, fetcher=self.fetcher)  # fmt: skip
        return self._responder(channel, reply_to=None)

    def _responder(self, channel: Any, *, reply_to: discord.Message | None) -> ChannelResponder:
        return ChannelResponder(
            channel, reply_to=reply_to, edit_interval=self._interval(), fetcher=self.fetcher
        )

    def _interval(self) -> float:
        return self.settings.edit_interval("discord")

    # --- messages -------------------------------------------------------------------

    async def on_message(self, msg: discord.Message) -> None:
        client = self.client
        if client is None or client.user is None or msg.author.bot:
            return  # ourselves and other bots
        is_dm = isinstance(msg.channel, discord.DMChannel)
        mentioned = client.user in msg.mentions
        in_own_thread = (
            isinstance(msg.channel, discord.Thread) and msg.channel.owner_id == client.user.id
        )
        if not (is_dm or mentioned or in_own_thread):
            return
        channel: Any = msg.channel
        reply_to: discord.Message | None = msg
        delivery = str(msg.id)
        if mentioned and self.platform.open_threads and isinstance(channel, discord.TextChannel):
            # A new thread is a new conversation, so nothing is ahead of it in a line; the
            # dedupe comes first here so that two replicas never open two threads.
            if not await self.deduper.first_seen("discord", delivery):
                return  # another replica on the same token took it
            channel = await msg.create_thread(name=_thread_name(msg.clean_content))
            reply_to, delivery = None, ""
        message = to_message(msg, channel, client.user.id, self._admins)
        if is_dm:
            message = replace(message, private=True)
        if delivery:  # the core dedupes it, after taking its place in line (before any await)
            message = replace(message, delivery_id=delivery, order=f"{msg.id:020d}")
        responder = self._responder(channel, reply_to=reply_to)
        await self.handler(message, responder)

    # --- approval buttons -----------------------------------------------------------

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A press of Approve or Deny (a component interaction): acknowledged at once (a
        deferred update, well inside Discord's 3 s), then decided in the background.
        Slash commands go to the command tree; other components are not ours."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: Any = interaction.data or {}
        pressed = parse(data.get("custom_id") if isinstance(data, dict) else None)
        if pressed is None:
            return
        try:
            if self.on_decision is None:  # a process that does not take decisions
                await interaction.response.send_message(UNHANDLED, ephemeral=True)
                return
            await interaction.response.defer()  # type 6: the message and buttons stay as they are
        except discord.HTTPException as exc:  # too late, or another replica answered first
            log.warning("discord: a button press could not be acknowledged (%s)",
                        type(exc).__name__)  # fmt: skip
            return
        decision = decision_of(interaction, *pressed, self._admins)
        on_decision, reply = self.on_decision, ButtonReply(interaction)
        self._background(lambda: on_decision(decision, reply, self.responder_for))

    def _background(self, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await work()
            except Exception:  # logged here, never shown in the chat
                log.exception("discord: a button press failed")

        task = asyncio.create_task(run(), name="discord:decision")
        self._decisions.add(task)
        task.add_done_callback(self._decisions.discard)

    # --- slash commands -------------------------------------------------------------

    def _register_commands(self, tree: app_commands.CommandTree[discord.Client]) -> None:
        personas = [app_commands.Choice(name=n, value=n) for n in list(self.settings.personas)[:25]]
        models = [app_commands.Choice(name=m, value=m) for m in self.settings.llm.models[:25]]

        @app_commands.describe(question="What do you want to ask?")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self._slash(interaction, Command("ask", question))

        async def reset(interaction: discord.Interaction) -> None:
            await self._slash(interaction, Command("reset"))

        async def help_(interaction: discord.Interaction) -> None:
            await self._slash(interaction, Command("help"))

        @app_commands.choices(name=personas)
        async def persona(interaction: discord.Interaction, name: str) -> None:
            await self._slash(interaction, Command("persona", name))

        @app_commands.choices(name=models)
        async def model(interaction: discord.Interaction, name: str) -> None:
            await self._slash(interaction, Command("model", name))

        @app_commands.describe(prompt="What should the picture show?")
        async def image(interaction: discord.Interaction, prompt: str) -> None:
            await self._slash(interaction, Command("image", prompt))

        @app_commands.describe(mode="Also answer with speech (on) or text only (off)")
        @app_commands.choices(mode=ON_OFF)
        async def voice(interaction: discord.Interaction, mode: str) -> None:
            await self._slash(interaction, Command("voice", mode))

        commands: list[tuple[str, Any, str]] = [
            ("ask", ask, "Ask the bot a question"),
            ("reset", reset, "Forget this conversation"),
            ("persona", persona, "Change the persona"),
            ("model", model, "Change the model"),
            ("help", help_, "What the bot can do"),
        ]
        if self.settings.media.enabled:  # with media off, no pictures and no speech
            commands += [
                ("image", image, "Draw a picture"),
                ("voice", voice, "Turn spoken answers on or off"),
            ]
        for command_name, callback, description in commands:
            tree.add_command(
                app_commands.Command(name=command_name, description=description, callback=callback)
            )

    async def _slash(self, interaction: discord.Interaction, command: Command) -> None:
        await interaction.response.defer(thinking=True)  # well inside the 3 s deadline
        channel: Any = interaction.channel
        if (
            command.name == "ask"
            and self.platform.open_threads
            and isinstance(channel, discord.TextChannel)
        ):
            await interaction.edit_original_response(
                content=f"Answering in a thread: {command.args[:80]}", allowed_mentions=NO_PINGS
            )
            thread = await channel.create_thread(
                name=_thread_name(command.args), type=discord.ChannelType.public_thread
            )
            responder: Any = self._responder(thread, reply_to=None)
            channel = thread
        else:
            responder = InteractionResponder(
                interaction,
                edit_interval=self._interval(),
                expiry=self.platform.interaction_expiry,
                fetcher=self.fetcher,
            )
        author = str(interaction.user.id)
        message = Message(
            platform="discord",
            key=conversation_key(channel, author),
            user=User(author, interaction.user.display_name, is_admin=author in self._admins),
            text=command.args if command.name == "ask" else "",
            message_id=str(interaction.id),
            command=command,
            extras=_interaction_extras(interaction)
            if isinstance(responder, InteractionResponder)
            else (),
        )
        await self.handler(message, responder)


def _interaction_extras(interaction: discord.Interaction) -> tuple[tuple[str, str], ...]:
    """What another process needs to answer through the interaction (`responder_for`)."""
    return (
        ("interaction_token", interaction.token),
        ("application_id", str(interaction.application_id)),
        ("received", f"{time.time():.3f}"),  # the token's 15 minutes run from here
    )


def _thread_name(text: str) -> str:
    name = " ".join(text.split())[:90]
    return name or "Conversation"
