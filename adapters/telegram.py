"""The Telegram adapter (python-telegram-bot v22): long polling or a webhook on our server.

Updates run concurrently, with no bound of PTB's own (its `concurrent_updates(True)` caps
them at 256): the core orders the turns of one conversation and bounds the answers in flight
for every platform alike (`limits.max_in_flight`). `PriorityRateLimiter` keeps within
Telegram's flood limits, honours `retry_after`, and sends final messages first: drafts,
partial edits and typing signals are best-effort, skipped when the budget is short. Private
answers stream as a draft (`sendMessageDraft`, Bot API 9.3) and end with one `sendMessage`;
group answers are posted and edited. Every form is Telegram HTML (parts are cut to fit after
rendering), resent as plain text if Telegram rejects the markup. Files come in as attachments
(adapters/telegram_media.py) fetched through `getFile`, and go out as photos, voice notes or
documents.

Approval requests carry inline buttons (adapters/telegram_approvals.py); a press arrives as a
`callback_query` update (so both getUpdates and setWebhook ask for that type) and runs in its
update's task like a message: the query is answered once (the core's notice as an alert, or
empty as the request is settled), then the answer goes on through `responder_for`.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias

# Opt in to PTB's future timedelta durations now, so its deprecation warning never fires.
# https://docs.python-telegram-bot.org/en/stable/telegram.error.html#telegram.error.RetryAfter
os.environ.setdefault("PTB_TIMEDELTA", "true")

from aiohttp import web
from telegram import BotCommand, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.base import AdapterStartError
from adapters.supervisor import Supervisor
from adapters.telegram_approvals import CallbackReply
from adapters.telegram_http import AiohttpRequest
from adapters.telegram_limits import PriorityRateLimiter
from adapters.telegram_polling import CheckedUpdatesRequest, Poller
from adapters.telegram_responder import TELEGRAM_LIMIT, TelegramResponder
from adapters.telegram_updates import BotIdentity, to_decision, to_message
from adapters.webhook_guard import Refused, ThrottledLog, guarded, json_object
from core.config import Settings, TelegramSettings
from core.model import Message
from core.protocols import DecisionHandler, Handler

if TYPE_CHECKING:
    from telegram.ext import ExtBot, JobQueue

    from adapters.telegram_limits import RateLimitArgs

    # What `_build` builds: our rate limiter's arguments, PTB's default context types.
    TelegramApplication: TypeAlias = Application[
        ExtBot[RateLimitArgs],
        ContextTypes.DEFAULT_TYPE,
        dict[Any, Any],
        dict[Any, Any],
        dict[Any, Any],
        JobQueue[ContextTypes.DEFAULT_TYPE],
    ]

__all__ = ["TELEGRAM_LIMIT", "TelegramAdapter", "TelegramResponder"]

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
UPDATES_AT_ONCE = 1 << 20  # PTB's bound, far above the core's limits.max_in_flight
API_ANSWER_BYTES = 1 << 20  # room for a Bot API answer above the largest file downloaded
# What Telegram delivers (getUpdates, setWebhook): anything else it keeps to itself.
ALLOWED_UPDATES = ("message", "callback_query")
UNHANDLED = "Approvals are not handled by this bot right now."
COMMANDS = [
    BotCommand("ask", "Ask a question"),
    BotCommand("reset", "Forget this conversation"),
    BotCommand("persona", "Show or change the persona"),
    BotCommand("model", "Show or change the model"),
    BotCommand("image", "Draw a picture"),
    BotCommand("voice", "Spoken answers: on or off"),
    BotCommand("help", "What I can do"),
    BotCommand("start", "Say hello"),
]


class TelegramAdapter:
    """Builds the PTB Application, mounts the webhook, and hands messages to the core."""

    name = "telegram"

    def __init__(
        self,
        handler: Handler,
        settings: Settings,
        *,
        token: str,
        api_url: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        on_intake_restart: Callable[[str], None] | None = None,
        on_decision: DecisionHandler | None = None,
        ack_after_handling: bool = False,
    ) -> None:
        self.handler = handler
        # An ingress: an update is confirmed (webhook 200, polling offset) only once the
        # handler took it, which for an ingress is a quick append to Redis.
        self.ack_after_handling = ack_after_handling
        self.on_decision = on_decision
        self.settings = settings
        self.platform: TelegramSettings = settings.platforms.telegram
        self.token = token
        self.api_url = api_url
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret or ""
        self.application: TelegramApplication | None = None
        self.identity: BotIdentity | None = None
        self._ready = False
        self._refusals = ThrottledLog(log)
        self.on_intake_restart = on_intake_restart
        self._poller: Poller | None = None
        self._intake: Supervisor | None = None

    def mount(self, app: web.Application) -> None:
        if self.webhook_url:
            app.router.add_post(WEBHOOK_PATH, guarded("telegram", self._webhook, self._refusals))

    def _build(self) -> TelegramApplication:
        limiter = PriorityRateLimiter(
            max_rate=self.platform.max_rate,
            group_max_rate=self.platform.group_max_rate,
            max_retries=3,
        )
        builder = (
            # PTB adds the long-poll timeout to the getUpdates read timeout
            ApplicationBuilder().token(self.token).rate_limiter(limiter)
            .concurrent_updates(UPDATES_AT_ONCE)
            .request(AiohttpRequest(max_body=self.settings.media.max_bytes + API_ANSWER_BYTES))
            .get_updates_request(CheckedUpdatesRequest(read_timeout=5.0))
            .updater(None)  # `Poller` polls, under our supervisor
        )  # fmt: skip
        if self.api_url:
            # TELEGRAM_API_URL is the server's root (or its /bot prefix); files are under
            # <root>/file/bot<token>/, as on api.telegram.org and a self-hosted server.
            root = self.api_url.rstrip("/").removesuffix("/bot")
            builder = builder.base_url(root + "/bot").base_file_url(root + "/file/bot")
        application = builder.build()
        application.add_handler(TypeHandler(Update, self._on_update))
        return application

    async def start(self) -> None:
        application = self._build()
        try:
            await self._initialize(application)
        except InvalidToken:
            raise AdapterStartError(
                "Telegram refused TELEGRAM_BOT_TOKEN (getMe: Unauthorized); check the token "
                "from @BotFather"
            ) from None
        except TelegramError as exc:
            raise AdapterStartError(
                f"Telegram is unreachable at start ({type(exc).__name__})"
            ) from None
        self.application = application
        bot = application.bot
        self.identity = BotIdentity(bot.id, bot.username)
        await bot.set_my_commands(COMMANDS)
        if self.webhook_url:
            await bot.set_webhook(
                self.webhook_url,
                secret_token=self.webhook_secret or None,
                allowed_updates=list(ALLOWED_UPDATES),
            )
        else:
            await bot.delete_webhook()
            self._poller = Poller(
                bot,
                application.update_queue,
                timeout=self.platform.poll_timeout,
                allowed_updates=list(ALLOWED_UPDATES),
                deliver=application.process_update if self.ack_after_handling else None,
            )
            self._intake = Supervisor("telegram", self._poller.run, on_restart=self._restarted)
        await application.start()
        if self._intake is not None:
            self._intake.start()
        self._ready = True
        log.info("telegram: @%s via %s", bot.username, "webhook" if self.webhook_url else "polling")

    async def start_sending(self) -> None:
        """A worker's Telegram: the Bot API client alone. The ingress polls or holds the
        webhook; this process neither sets nor deletes it."""
        application = self._build()
        try:
            await self._initialize(application)
        except TelegramError as exc:
            raise AdapterStartError(
                f"Telegram refused or is unreachable at start ({type(exc).__name__})"
            ) from None
        self.application = application
        self.identity = BotIdentity(application.bot.id, application.bot.username)
        self._ready = True

    @staticmethod
    async def _initialize(application: TelegramApplication) -> None:
        """getMe. On failure the bot's HTTP clients, which initialize() opened first, are
        closed here: shutdown() of an Application that never finished initializing does
        nothing, and their pooled connection would be left to the collector."""
        try:
            await application.initialize()
        except BaseException:
            await application.bot.shutdown()
            raise

    async def stop(self) -> None:
        self._ready = False
        intake, self._intake = self._intake, None
        if intake is not None:
            await intake.stop()
        if self._poller is not None:
            await self._poller.confirm()
            self._poller = None

    def _restarted(self) -> None:
        if self.on_intake_restart is not None:
            self.on_intake_restart(self.name)

    async def close(self) -> None:
        application = self.application
        if application is None:
            return
        if application.running:
            await application.stop()
        await application.shutdown()
        self.application = None

    def ready(self) -> bool:
        """Started, and polling right now (not waiting to restart a stopped loop)."""
        return self._ready and (self._intake is None or self._intake.running)

    def responder_for(self, message: Message) -> TelegramResponder:
        assert self.application is not None
        chat_id = int(message.key.channel)
        private = chat_id > 0
        return TelegramResponder(
            self.application.bot,
            chat_id,
            thread_id=int(message.key.thread) if message.key.thread else None,
            reply_to=None if private else int(message.message_id),
            edit_interval=self._interval(private),
            drafts=self.platform.drafts and private,
        )

    def _interval(self, private: bool) -> float:
        base = self.settings.edit_interval("telegram")
        return base if private else max(base, self.platform.group_edit_interval)

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if self.identity is None:
            return
        if update.callback_query is not None:
            await self._on_press(update)
            return
        message = to_message(update, self.identity, frozenset(self.platform.admins))
        if message is None:
            return
        # Straight to the core, before any await: the message's place in its conversation's
        # line is taken now, in update order (the core dedupes `update_id` itself).
        update_id = update.update_id
        message = replace(message, delivery_id=str(update_id), order=f"{update_id:020d}")
        await self.handler(message, self.responder_for(message))

    async def _on_press(self, update: Update) -> None:
        """A press of Approve or Deny, in its update's task (PTB's, awaited by `close`):
        decided by the core, the query answered exactly once. A failure is logged, never
        shown in the chat."""
        assert self.application is not None
        query = update.callback_query
        assert query is not None
        message = query.message  # the request; an old one may be "inaccessible", ids intact
        reply = CallbackReply(
            self.application.bot, query.id,
            message.chat.id if message is not None else None,
            message.message_id if message is not None else None,
        )  # fmt: skip
        decision = to_decision(update)
        try:
            if decision is None:
                return  # not one of our buttons: only the spinner to stop
            if self.on_decision is None:  # requests were posted, but nothing takes presses
                log.warning("telegram: an approval press, but no decision handler is wired")
                await reply.notice(UNHANDLED)
                return
            await self.on_decision(decision, reply, self.responder_for)
        except Exception:
            log.exception("telegram: the approval press failed")
        finally:
            await reply.finish()

    async def _webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not self.webhook_secret or not hmac.compare_digest(
            given.encode(), self.webhook_secret.encode()
        ):
            raise Refused(403, "wrong secret token")
        if self.application is None:
            return web.Response(status=503, text="starting")
        data = json_object(await request.read())
        if type(data.get("update_id")) is not int:
            raise Refused(400, "no numeric update_id")
        try:
            update = Update.de_json(data, self.application.bot)
        except Exception:  # PTB reads any shape it does not expect with a TypeError or worse
            raise Refused(400, "not a Telegram update") from None
        if self.ack_after_handling:
            await self.application.process_update(update)
        else:
            await self.application.update_queue.put(update)
        return web.Response(text="ok")
