"""The Slack adapter (slack-bolt AsyncApp): HTTP events on our server, or Socket Mode.

Signatures are verified before bolt sees a request (`slack_webhook`: bolt would log a
refused request's whole body), and junk is refused with a 4xx (`webhook_guard`). Bolt answers
`url_verification`, acks before the work starts, and hands us events; we dedupe `event_id`s
through the core (Slack retries slow acks up to 3 times) and answer through the responders
of `slack_responders` (text and files in the thread; a slash command's private answer). Files
are fetched and posted by `slack_files.SlackFiles`, one for every responder.

Approval buttons (`slack_approvals`) come back as `block_actions` on the same URL (or socket):
acked at once, then the press goes to `on_decision` in bolt's background task, tracked so
`close` lets it finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncAssistant
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import AdapterStartError
from adapters.slack_approvals import APPROVE, DENY, SlackPressReply, decision_from
from adapters.slack_events import (
    BotIdentity,
    command_from_slash,
    is_ignored,
    mentions_bot,
    to_message,
)
from adapters.slack_files import SlackFiles
from adapters.slack_responders import LIMIT as LIMIT
from adapters.slack_responders import EphemeralResponder, SlackResponder
from adapters.slack_webhook import check_shape, verified_text
from adapters.webhook_guard import ThrottledLog, guarded
from core.config import Settings, SlackSettings
from core.model import ContextKey, Message, User
from core.protocols import DecisionHandler, Handler

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


class SlackAdapter:
    """Slack events in, answers out."""

    name = "slack"

    def __init__(
        self,
        handler: Handler,
        settings: Settings,
        *,
        bot_token: str,
        signing_secret: str | None = None,
        app_token: str | None = None,
        api_url: str | None = None,
        on_decision: DecisionHandler | None = None,
        ack_after_handling: bool = False,
    ) -> None:
        self.handler = handler
        # An ingress: Slack gets its 200 once the handler took the event (a quick append to
        # Redis), so an ingress killed meanwhile leaves Slack to retry it.
        self.ack_after_handling = ack_after_handling
        self.on_decision = on_decision
        self.settings = settings
        self.platform: SlackSettings = settings.platforms.slack
        self.signing_secret = signing_secret
        self.app_token = app_token
        self.client = AsyncWebClient(
            token=bot_token,
            base_url=api_url or AsyncWebClient.BASE_URL,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            ],
        )
        self.files = SlackFiles(self.client, api_url=api_url)
        self.bot: BotIdentity | None = None
        self.bolt: AsyncApp | None = None
        self.socket: AsyncSocketModeHandler | None = None
        self._ready = False
        self._admins = frozenset(self.platform.admins)
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._refusals = ThrottledLog(log)
        self._presses: set[asyncio.Task[Any]] = set()  # decisions under way

    def mount(self, app: web.Application) -> None:
        if self.signing_secret:
            app.router.add_post(EVENTS_PATH, guarded("slack", self._http, self._refusals))

    async def start(self) -> None:
        await self._open(self._connect)

    async def start_sending(self) -> None:
        """A worker's Slack: the Web API client alone (events arrive at the ingress)."""

        async def identify() -> None:
            await self._identify()
            self._ready = True

        await self._open(identify)

    async def _open(self, connect: Callable[[], Awaitable[None]]) -> None:
        # slack-sdk opens a new aiohttp session, so a new TCP and TLS connection, for every
        # call it is not given a session for: one kept-alive session serves them all. No cap
        # on its connections, as with slack-sdk's own sessions (a wait would eat the timeout).
        await self._close_session()
        self.client.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.client.timeout),
        )
        try:
            await connect()
        except BaseException:
            await self._close_session()
            raise

    async def _identify(self) -> None:
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise AdapterStartError(
                f"Slack refused SLACK_BOT_TOKEN (auth.test: {exc.response.get('error')}); "
                "check the bot token"
            ) from None
        except Exception as exc:
            raise AdapterStartError(
                f"Slack is unreachable at start ({type(exc).__name__})"
            ) from None
        self.bot = BotIdentity(str(auth["user_id"]), str(auth.get("bot_id", "")),
                               str(auth.get("team_id", "")))  # fmt: skip

    async def _connect(self) -> None:
        await self._identify()
        assert self.bot is not None
        self.bolt = self._build_bolt()
        if self.app_token:
            self.socket = AsyncSocketModeHandler(self.bolt, self.app_token)
            # slack-sdk's connect() retries every error for ever, a refused app token too:
            # the first WebSocket URL is asked for here, so a bad token stops the start.
            try:
                self.socket.client.wss_uri = await self.socket.client.issue_new_wss_url()
            except SlackApiError as exc:
                await self.socket.close_async()
                self.socket = None
                raise AdapterStartError(
                    f"Slack refused SLACK_APP_TOKEN (apps.connections.open: "
                    f"{exc.response.get('error')}); check the app-level token (xapp-…, "
                    "connections:write)"
                ) from None
            await self.socket.connect_async()
        self._ready = True
        log.info("slack: %s via %s", self.bot.user_id, "socket mode" if self.socket else "HTTP")

    def _build_bolt(self) -> AsyncApp:
        bolt = AsyncApp(
            client=self.client,
            signing_secret=self.signing_secret or "",
            # `_http` verifies every request first; bolt's check would log refused bodies
            request_verification_enabled=False,
            process_before_response=self.ack_after_handling,
        )
        bolt.event("app_mention")(self._on_mention)
        bolt.event("message")(self._on_message)
        bolt.command(self.platform.command)(self._on_command)
        bolt.action(APPROVE)(self._on_press)
        bolt.action(DENY)(self._on_press)
        assistant = AsyncAssistant()
        assistant.thread_started(self._on_assistant_started)
        assistant.user_message(self._on_assistant_message)
        bolt.use(assistant)
        return bolt

    async def stop(self) -> None:
        """Take no new events. Answers in flight keep the session until `close`."""
        self._ready = False
        if self.socket is not None:
            await self.socket.close_async()
            self.socket = None

    async def _close_session(self) -> None:
        session, self.client.session = self.client.session, None
        if session is not None:
            await session.close()

    async def close(self) -> None:
        """After the answers in flight are drained (and answers after a press, up to the
        shutdown grace: they are no turn the core counts)."""
        await self.stop()
        if self._presses:
            _, late = await asyncio.wait(self._presses, timeout=self.settings.server.shutdown_grace)
            for task in late:
                task.cancel()
        await self.files.close()
        await self._close_session()

    def ready(self) -> bool:
        return self._ready

    def responder_for(self, message: Message) -> SlackResponder:
        """Where an answer goes on (after a press, after a restart): the message's thread,
        or for a private slash answer in a channel the asker's DM (ephemeral messages cannot
        be posted later, and the channel must not see it)."""
        channel, thread = message.key.channel, message.key.thread or None
        if message.private and thread is None and not channel.startswith("D"):
            channel = ""  # the DM, opened at the first post
        return self._responder(channel, thread, message.key.user)

    def _responder(
        self, channel: str, thread: str | None, user: str, set_status: Any = None
    ) -> SlackResponder:
        return SlackResponder(
            self.client,
            channel,
            thread_ts=thread,
            edit_interval=self.settings.edit_interval("slack"),
            native=self.platform.native_streaming,
            team=self.bot.team_id if self.bot else "",
            user=user,
            thinking=self.platform.thinking,
            files=self.files,
            set_status=set_status,
        )

    async def _http(self, request: web.Request) -> web.Response:
        if self.bolt is None or self._verifier is None:
            return web.Response(status=503, text="starting")
        raw = await request.read()
        check_shape(verified_text(self._verifier, raw, request.headers), request.content_type)
        response = await self.bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _answer(
        self, message: Message, responder: Any, body: dict[str, Any] | None = None
    ) -> None:
        """Hand the message to the core at once: its place in the conversation's line is
        taken before anything awaits (the core dedupes `event_id` itself)."""
        event_id = str(body.get("event_id") or "") if body else ""
        if event_id:  # a message's ts orders its conversation (zero-padded to sort as text)
            message = replace(message, delivery_id=event_id, order=message.message_id.zfill(20))
        await self.handler(message, responder)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        assert self.bot is not None
        if is_ignored(event, self.bot, self.platform.allow_bots):
            return
        thread = str(event.get("thread_ts") or event["ts"])
        message = to_message(event, self.bot, thread=thread, admins=self._admins)
        responder = self._responder(message.key.channel, thread, message.key.user)
        await self._answer(message, responder, body)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        assert self.bot is not None
        if is_ignored(event, self.bot, self.platform.allow_bots):
            return
        text = str(event.get("text", ""))
        follow_up = False
        if event.get("channel_type") == "im":
            thread = str(
                event.get("thread_ts") or (event["ts"] if self.platform.dm_threads else "")
            )
        elif mentions_bot(text, self.bot.user_id):
            return  # the app_mention event answers it
        elif event.get("thread_ts") and self.platform.follow_threads:
            thread = str(event["thread_ts"])
            follow_up = True  # answered only in a thread the bot is already part of
        else:
            return  # channel chatter
        message = to_message(event, self.bot, thread=thread, admins=self._admins)
        if follow_up:
            message = replace(message, follow_up=True)
        responder = self._responder(message.key.channel, thread or None, message.key.user)
        await self._answer(message, responder, body)

    async def _on_command(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()  # within Slack's 3 s: the answer follows
        assert self.bot is not None
        user, channel = str(body.get("user_id", "")), str(body.get("channel_id", ""))
        command = command_from_slash(str(body.get("text", "")))
        message = Message(
            platform="slack",
            key=ContextKey(
                "slack",
                channel=channel,
                user=user,
                workspace=str(body.get("team_id", self.bot.team_id)),
            ),
            user=User(user, str(body.get("user_name", user)), is_admin=user in self._admins),
            text=command.args if command.name == "ask" else "",
            message_id=str(body.get("trigger_id", "")),
            command=command,
            # answers only the asker sees (a slash command's channel name cannot tell the bot's
            # DM from one between two people)
            private=self.platform.ephemeral,
        )
        if self.platform.ephemeral:
            await self._answer(message, EphemeralResponder(respond, files=self.files, user=user))
        else:
            await self._answer(message, self._responder(channel, None, user))

    async def _on_press(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()  # within Slack's 3 s: the decision follows
        decision = decision_from(body, self._admins)
        if decision is None:
            return
        reply = SlackPressReply(self.client, body, respond)
        if self.on_decision is None:  # requests were posted, but nothing here takes presses
            log.warning("slack: an approval press, but no decision handler is wired")
            await reply.notice("Approvals are not handled by this bot right now.")
            return
        task = asyncio.current_task()  # bolt's task for this listener
        if task is not None:
            self._presses.add(task)
        try:
            await self.on_decision(decision, reply, self.responder_for)
        except Exception:
            log.exception("slack: the approval press failed")
        finally:
            if task is not None:
                self._presses.discard(task)

    async def _on_assistant_started(self, set_suggested_prompts: Any) -> None:
        prompts = [p.model_dump() for p in self.platform.suggested_prompts]
        if prompts:
            await set_suggested_prompts(prompts=prompts)

    async def _on_assistant_message(
        self, body: dict[str, Any], payload: dict[str, Any], set_status: Any
    ) -> None:
        assert self.bot is not None
        if is_ignored(payload, self.bot, self.platform.allow_bots):
            return
        thread = str(payload.get("thread_ts") or payload["ts"])
        message = to_message(payload, self.bot, thread=thread, admins=self._admins)
        responder = self._responder(message.key.channel, thread, message.key.user, set_status)
        await self._answer(message, responder, body)
