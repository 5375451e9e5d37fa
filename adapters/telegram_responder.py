"""Answering in one Telegram chat: drafts, posts and edits of our HTML.

Private answers stream as a draft (`sendMessageDraft`, Bot API 9.3) and end with one
`sendMessage`; group answers are posted and edited.
"""

from __future__ import annotations

import html
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest

from adapters.telegram_format import measure as telegram_measure
from adapters.telegram_format import to_telegram_html, visible_text
from adapters.telegram_limits import BEST_EFFORT, LOW, SKIPPED
from core.model import MessageRef

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # UTF-16 units of the text after entity parsing
MARKER = " ▌"  # ends the in-progress form of a part
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
