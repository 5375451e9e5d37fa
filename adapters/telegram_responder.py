"""Answering in one Telegram chat: drafts, posts and edits of our HTML, and files.

Private answers stream as a draft (`sendMessageDraft`, Bot API 9.3) and end with one
`sendMessage`; group answers are posted and edited. Files the core fetches or posts go
through adapters/telegram_media.py. An approval request is a message with Approve and Deny
buttons (adapters/telegram_approvals.py).
"""

from __future__ import annotations

import html
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import InputFile, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest

from adapters.telegram_approvals import keyboard
from adapters.telegram_format import measure as telegram_measure
from adapters.telegram_format import to_telegram_html, visible_text
from adapters.telegram_limits import BEST_EFFORT, LOW, SKIPPED
from adapters.telegram_media import caption_of, fetch_file, upload_method
from core.model import ApprovalRequest, Attachment, MessageRef, OutgoingFile

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # UTF-16 units of the text after entity parsing
MARKER = " ▌"  # ends the in-progress form of a part
_draft_ids = itertools.count(secrets.randbelow(1_000_000) + 1)


class TelegramResponder:
    """Answers in one chat (and topic): drafts in private chats, edits in groups.

    Every form is our HTML: the in-progress one ends with a marker. Plain text is only the
    fallback when Telegram rejects the markup ("can't parse entities"), logged once. Files
    the bot posts reply to the question in groups, as the first part of a text answer does.
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
        self.question = reply_to  # what files reply to (`reply_to` is spent by the first part)
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

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        """The request as our HTML with Approve and Deny under it, in the chat and topic,
        replying to the question in groups (as the answer does). A request too long for one
        message is cut, as plain text."""
        reply = None
        if self.question is not None:
            reply = ReplyParameters(self.question, allow_sending_without_reply=True)
        buttons = keyboard(request.id)
        sent_ids: list[int] = []

        async def post(body: str, parse_mode: str | None) -> bool:
            sent = await self.bot.send_message(
                self.chat_id, body, parse_mode=parse_mode, message_thread_id=self.thread_id,
                reply_parameters=reply, reply_markup=buttons,
            )  # fmt: skip
            sent_ids.append(int(sent.message_id))
            return True

        rendered = _form(request.text, final=True)
        if telegram_measure(request.text) <= TELEGRAM_LIMIT:
            await self._html_or_plain(post, rendered)
        else:
            await post(_cut_plain(visible_text(rendered), TELEGRAM_LIMIT), None)
        return MessageRef(str(sent_ids[-1]), str(self.chat_id))

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        return await fetch_file(self.bot, attachment, max_bytes)

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """A photo, a voice note or a document, with its caption as our HTML. A photo
        Telegram will not take (its sides, its size) goes again as a document."""
        method = upload_method(file)
        try:
            message_id = await self._upload(method, file)
        except BadRequest as exc:
            if method != "photo":
                raise
            log.info("telegram: photo refused (%s); sending it as a document", exc.message)
            message_id = await self._upload("document", file)
        return MessageRef(str(message_id), str(self.chat_id))

    async def _upload(self, method: str, file: OutgoingFile) -> int:
        """send_photo / send_voice / send_document (rate-limited as a required call)."""
        reply = None
        if self.question is not None:
            reply = ReplyParameters(self.question, allow_sending_without_reply=True)
        send = getattr(self.bot, f"send_{method}")
        sent_ids: list[int] = []

        async def upload(caption: str, parse_mode: str | None) -> bool:
            part = InputFile(file.data, filename=file.name)
            part.mimetype = file.mime_type or part.mimetype
            sent = await send(
                self.chat_id, part, caption=caption or None, parse_mode=parse_mode,
                message_thread_id=self.thread_id, reply_parameters=reply,
            )  # fmt: skip
            sent_ids.append(int(sent.message_id))
            return True

        caption, markup = caption_of(file.caption)
        if markup:
            await self._html_or_plain(upload, caption)
        else:
            await upload(caption, None)
        return sent_ids[-1]

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


def _cut_plain(text: str, limit: int) -> str:
    """At most `limit` UTF-16 units of `text`, ending with an ellipsis when cut."""
    units = text.encode("utf-16-le")
    if len(units) // 2 <= limit:
        return text
    return units[: (limit - 1) * 2].decode("utf-16-le", errors="ignore") + "…"


def _form(text: str, final: bool) -> str:
    """Our HTML for a part; the in-progress form ends with the marker."""
    rendered = to_telegram_html(text) or html.escape(text.strip() or "…", quote=False)
    return rendered if final else rendered + html.escape(MARKER, quote=False)
