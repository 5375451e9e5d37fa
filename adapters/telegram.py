"""The Telegram adapter (python-telegram-bot v22): long polling or a webhook on our server.

Updates run concurrently (`concurrent_updates(True)`); the core serialises turns of one
conversation. `AIORateLimiter` keeps within Telegram's flood limits and honours
`retry_after`. Private answers stream as a draft (`sendMessageDraft`, Bot API 9.3) and end
with one `sendMessage`; group answers are posted and edited. Final text is Telegram HTML,
resent as plain text if Telegram rejects the markup.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

# Opt in to PTB's future timedelta durations now, so its deprecation warning never fires.
# https://docs.python-telegram-bot.org/en/stable/telegram.error.html#telegram.error.RetryAfter
os.environ.setdefault("PTB_TIMEDELTA", "true")

from aiohttp import web
from telegram import BotCommand, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, InvalidToken, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.base import AdapterStartError
from adapters.supervisor import Supervisor
from adapters.telegram_format import to_telegram_html
from adapters.telegram_http import AiohttpRequest
from adapters.telegram_polling import CheckedUpdatesRequest, Poller
from adapters.telegram_updates import BotIdentity, to_message
from adapters.webhook_guard import Refused, ThrottledLog, guarded, json_object
from core.config import Settings, TelegramSettings
from core.model import Message, MessageRef
from core.protocols import Deduper, Handler

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TELEGRAM_LIMIT = 4096
RAW_LIMIT = 3800  # room for the HTML tags the rendering adds
COMMANDS = [
    BotCommand("ask", "Ask a question"),
    BotCommand("reset", "Forget this conversation"),
    BotCommand("persona", "Show or change the persona"),
    BotCommand("model", "Show or change the model"),
    BotCommand("help", "What I can do"),
    BotCommand("start", "Say hello"),
]
_draft_ids = itertools.count(secrets.randbelow(1_000_000) + 1)


class TelegramResponder:
    """Answers in one chat (and topic): drafts in private chats, edits in groups."""

    limit = RAW_LIMIT
    typing_interval = 4.0  # Telegram shows "typing…" for 5 s

    def __init__(
        self,
        bot: Any,
        chat_id: int,
        *,
        thread_id: int | None,
        reply_to: int | None,
        edit_interval: float,
        drafts: bool,
    ) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.reply_to = reply_to
        self.edit_interval = edit_interval
        self.drafts = drafts
        self._shown: dict[str, str] = {}

    async def typing(self) -> None:
        await self.bot.send_chat_action(
            self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id
        )

    async def send(self, text: str, *, final: bool) -> MessageRef:
        if self.drafts and not final:
            draft = next(_draft_ids)
            await self._draft(draft, text)
            return MessageRef(f"draft:{draft}", str(self.chat_id))
        message_id = await self._post(text, final=final)
        return MessageRef(str(message_id), str(self.chat_id))

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        if ref.id.startswith("draft:"):
            if final:
                await self._post(text, final=True)
            else:
                await self._draft(int(ref.id.split(":", 1)[1]), text)
            return
        rendered = to_telegram_html(text) if final else text + " ▌"
        if self._shown.get(ref.id) == rendered:
            return  # never an edit that changes nothing
        try:
            await self.bot.edit_message_text(
                rendered,
                chat_id=self.chat_id,
                message_id=int(ref.id),
                parse_mode=ParseMode.HTML if final else None,
            )
        except BadRequest as exc:
            if "not modified" in exc.message:
                pass
            elif final and "parse entities" in exc.message:
                rendered = text
                if self._shown.get(ref.id) != rendered:
                    await self.bot.edit_message_text(
                        text, chat_id=self.chat_id, message_id=int(ref.id)
                    )
            else:
                raise
        self._shown[ref.id] = rendered

    async def delete(self, ref: MessageRef) -> None:
        if not ref.id.startswith("draft:"):  # a draft vanishes by itself
            await self.bot.delete_message(self.chat_id, int(ref.id))
            self._shown.pop(ref.id, None)

    async def _draft(self, draft_id: int, text: str) -> None:
        await self.bot.send_message_draft(
            self.chat_id, draft_id, text, message_thread_id=self.thread_id
        )

    async def _post(self, text: str, *, final: bool) -> int:
        reply = None
        if self.reply_to is not None:
            reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True)
        rendered = to_telegram_html(text) if final else text + " ▌"
        use_html = final
        if final and len(rendered) > TELEGRAM_LIMIT:
            rendered, use_html = text, False  # the markup would not fit: plain text does
        try:
            sent = await self.bot.send_message(
                self.chat_id,
                rendered,
                parse_mode=ParseMode.HTML if use_html else None,
                message_thread_id=self.thread_id,
                reply_parameters=reply,
            )
        except BadRequest as exc:
            if "parse entities" not in exc.message:
                raise
            rendered = text  # Telegram rejected the markup: the words still go out
            sent = await self.bot.send_message(
                self.chat_id, text, message_thread_id=self.thread_id, reply_parameters=reply
            )
        self._shown[str(sent.message_id)] = rendered
        self.reply_to = None  # only the first part replies to the question
        return int(sent.message_id)


class TelegramAdapter:
    """Builds the PTB Application, mounts the webhook, and hands messages to the core."""

    name = "telegram"

    def __init__(
        self,
        handler: Handler,
        deduper: Deduper,
        settings: Settings,
        *,
        token: str,
        api_url: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        on_intake_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.deduper = deduper
        self.settings = settings
        self.platform: TelegramSettings = settings.platforms.telegram
        self.token = token
        self.api_url = api_url
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret or ""
        self.application: Application | None = None  # type: ignore[type-arg]
        self.identity: BotIdentity | None = None
        self._ready = False
        self._refusals = ThrottledLog(log)
        self.on_intake_restart = on_intake_restart
        self._poller: Poller | None = None
        self._intake: Supervisor | None = None

    def mount(self, app: web.Application) -> None:
        if self.webhook_url:
            app.router.add_post(WEBHOOK_PATH, guarded("telegram", self._webhook, self._refusals))

    def _build(self) -> Application:  # type: ignore[type-arg]
        limiter = AIORateLimiter(
            overall_max_rate=self.platform.max_rate,
            group_max_rate=self.platform.group_max_rate,
            max_retries=3,
        )
        builder = (
            # PTB adds the long-poll timeout to the getUpdates read timeout
            ApplicationBuilder().token(self.token).concurrent_updates(True).rate_limiter(limiter)
            .request(AiohttpRequest()).get_updates_request(CheckedUpdatesRequest(read_timeout=5.0))
            .updater(None)  # `Poller` polls, under our supervisor
        )  # fmt: skip
        if self.api_url:
            base = self.api_url.rstrip("/")
            builder = builder.base_url(base if base.endswith("/bot") else base + "/bot")
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
                allowed_updates=["message"],
            )
        else:
            await bot.delete_webhook()
            self._poller = Poller(
                bot,
                application.update_queue,
                timeout=self.platform.poll_timeout,
                allowed_updates=["message"],
            )
            self._intake = Supervisor("telegram", self._poller.run, on_restart=self._restarted)
        await application.start()
        if self._intake is not None:
            self._intake.start()
        self._ready = True
        log.info("telegram: @%s via %s", bot.username, "webhook" if self.webhook_url else "polling")

    @staticmethod
    async def _initialize(application: Application) -> None:  # type: ignore[type-arg]
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
        message = to_message(update, self.identity, frozenset(self.platform.admins))
        if message is None:
            return
        if not await self.deduper.first_seen("telegram", str(update.update_id)):
            log.info("telegram: update %s delivered again; answered once", update.update_id)
            return
        await self.handler(message, self.responder_for(message))

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
        await self.application.update_queue.put(update)
        return web.Response(text="ok")
