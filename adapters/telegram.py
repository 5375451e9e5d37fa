"""The Telegram adapter (python-telegram-bot v22): long polling or a webhook on our server.

Updates run concurrently, with no bound of PTB's own (its `concurrent_updates(True)` caps
them at 256): the core orders the turns of one conversation and bounds the answers in flight
for every platform alike (`limits.max_in_flight`). `PriorityRateLimiter` keeps within
Telegram's flood limits, honours `retry_after`, and sends final messages first: drafts,
partial edits and typing signals are best-effort, skipped when the budget is short. Private
answers stream as a draft (`sendMessageDraft`, Bot API 9.3) and end with one `sendMessage`;
group answers are posted and edited. Every form is Telegram HTML (parts are cut to fit after
rendering), resent as plain text if Telegram rejects the markup.
"""

from __future__ import annotations

import hmac
import html
import itertools
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias

# Opt in to PTB's future timedelta durations now, so its deprecation warning never fires.
# https://docs.python-telegram-bot.org/en/stable/telegram.error.html#telegram.error.RetryAfter
os.environ.setdefault("PTB_TIMEDELTA", "true")

from aiohttp import web
from telegram import BotCommand, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, InvalidToken, TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters.base import AdapterStartError
from adapters.supervisor import Supervisor
from adapters.telegram_format import measure as telegram_measure
from adapters.telegram_format import to_telegram_html, visible_text
from adapters.telegram_http import AiohttpRequest
from adapters.telegram_limits import BEST_EFFORT, LOW, SKIPPED, PriorityRateLimiter
from adapters.telegram_polling import CheckedUpdatesRequest, Poller
from adapters.telegram_updates import BotIdentity, to_message
from adapters.webhook_guard import Refused, ThrottledLog, guarded, json_object
from core.config import Settings, TelegramSettings
from core.model import Message, MessageRef
from core.protocols import Handler

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

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TELEGRAM_LIMIT = 4096  # UTF-16 units of the text after entity parsing
MARKER = " ▌"  # ends the in-progress form of a part
UPDATES_AT_ONCE = 1 << 20  # PTB's bound, far above the core's limits.max_in_flight
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
    """Answers in one chat (and topic): drafts in private chats, edits in groups.

    Every form is our HTML: the in-progress one ends with a marker. Plain text is only the
    fallback when Telegram rejects the markup ("can't parse entities"), logged once.
    """

    limit = TELEGRAM_LIMIT - len(MARKER)  # the in-progress form adds the marker
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
        self._plain_logged = False

    def measure(self, text: str) -> int:
        """UTF-16 units of the text Telegram shows, as its limit counts them."""
        return telegram_measure(text)

    async def typing(self) -> None:
        await self.bot.send_chat_action(
            self.chat_id,
            ChatAction.TYPING,
            message_thread_id=self.thread_id,
            rate_limit_args=LOW,
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
        rendered = _form(text, final)
        if self._shown.get(ref.id) == rendered:
            return  # never an edit that changes nothing

        async def edit(body: str, parse_mode: str | None) -> bool:
            edited = await self.bot.edit_message_text(
                body, chat_id=self.chat_id, message_id=int(ref.id), parse_mode=parse_mode,
                rate_limit_args=None if final else BEST_EFFORT,
            )  # fmt: skip
            return edited is not SKIPPED

        try:
            shown = await self._html_or_plain(edit, rendered)
        except BadRequest as exc:
            if "not modified" not in exc.message:
                raise
            shown = rendered
        if shown is None:
            return  # skipped, not shown: the next edit carries the whole text (and the final
            # is not taken for a repeat of it)
        self._shown[ref.id] = shown

    async def delete(self, ref: MessageRef) -> None:
        if not ref.id.startswith("draft:"):  # a draft vanishes by itself
            await self.bot.delete_message(self.chat_id, int(ref.id))
            self._shown.pop(ref.id, None)

    async def _draft(self, draft_id: int, text: str) -> None:
        async def draft(body: str, parse_mode: str | None) -> bool:
            # A skipped draft (the rate budget is short) is harmless: the next has it all.
            await self.bot.send_message_draft(
                self.chat_id, draft_id, body, message_thread_id=self.thread_id,
                parse_mode=parse_mode, rate_limit_args=BEST_EFFORT,
            )  # fmt: skip
            return True

        await self._html_or_plain(draft, _form(text, final=False))

    async def _post(self, text: str, *, final: bool) -> int:
        reply = None
        if self.reply_to is not None:
            reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True)
        sent_ids: list[int] = []

        async def post(body: str, parse_mode: str | None) -> bool:
            sent = await self.bot.send_message(
                self.chat_id, body, parse_mode=parse_mode, message_thread_id=self.thread_id,
                reply_parameters=reply,
            )  # fmt: skip
            sent_ids.append(int(sent.message_id))
            return True

        shown = await self._html_or_plain(post, _form(text, final))
        self._shown[str(sent_ids[-1])] = shown or ""
        self.reply_to = None  # only the first part replies to the question
        return sent_ids[-1]

    async def _html_or_plain(
        self, call: Callable[[str, str | None], Awaitable[bool]], rendered: str
    ) -> str | None:
        """Make `call` with our HTML; if Telegram rejects the markup, with the same text as
        plain text (the same length, so it fits too). Returns what was sent, or None when
        the rate limiter skipped a best-effort call (`call` returned False)."""
        try:
            return rendered if await call(rendered, ParseMode.HTML) else None
        except BadRequest as exc:
            if "parse entities" not in exc.message:
                raise
            if not self._plain_logged:  # one line per answer
                self._plain_logged = True
                log.warning("telegram: markup rejected (%s); sending plain text", exc.message)
        plain = visible_text(rendered)
        return plain if await call(plain, None) else None


def _form(text: str, final: bool) -> str:
    """Our HTML for a part; the in-progress form ends with the marker."""
    rendered = to_telegram_html(text) or html.escape(text.strip() or "…", quote=False)
    return rendered if final else rendered + html.escape(MARKER, quote=False)


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
    ) -> None:
        self.handler = handler
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
        message = to_message(update, self.identity, frozenset(self.platform.admins))
        if message is None:
            return
        # Straight to the core, before any await: the message's place in its conversation's
        # line is taken now, in update order (the core dedupes `update_id` itself).
        update_id = update.update_id
        message = replace(message, delivery_id=str(update_id), order=f"{update_id:020d}")
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
