"""Approval buttons on Telegram: the inline keyboard, its callback data, and the answer to
one press.

A request is a message with two inline buttons whose `callback_data` is `ap:<id>:y` or
`ap:<id>:n` (Telegram allows 1-64 bytes: https://core.telegram.org/bots/api#inlinekeyboardbutton).
A press comes back as a `callback_query` update, which must be answered with
`answerCallbackQuery` or the presser's client shows a spinner until it gives up
(https://core.telegram.org/bots/api#answercallbackquery). `CallbackReply` answers it exactly
once: with the core's notice as an alert only the presser sees, or empty when the request is
settled (the message edited to its outcome, the keyboard gone), or empty when the decision
ended without either.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError

from adapters.telegram_format import to_telegram_html, visible_text

log = logging.getLogger(__name__)

PREFIX = "ap"
APPROVE, DENY = "✅ Approve", "❌ Deny"
DATA_LIMIT = 64  # bytes of callback_data
ALERT_LIMIT = 200  # characters of an answerCallbackQuery text


def callback_data(approval_id: str, approve: bool) -> str:
    """The data of one button; a ValueError when the id makes it longer than Telegram takes."""
    data = f"{PREFIX}:{approval_id}:{'y' if approve else 'n'}"
    if len(data.encode()) > DATA_LIMIT:
        raise ValueError(f"approval id too long for Telegram's callback_data ({len(data)} bytes)")
    return data


def keyboard(approval_id: str) -> InlineKeyboardMarkup:
    """Approve and Deny, side by side."""
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(APPROVE, callback_data=callback_data(approval_id, True)),
          InlineKeyboardButton(DENY, callback_data=callback_data(approval_id, False))]]
    )  # fmt: skip


def parse(data: object) -> tuple[str, bool] | None:
    """(approval id, approve) from a button's callback_data; None when it is not ours."""
    if not isinstance(data, str) or not data.startswith(PREFIX + ":"):
        return None
    approval_id, _, answer = data[len(PREFIX) + 1 :].rpartition(":")
    if not approval_id or answer not in ("y", "n"):
        return None
    return approval_id, answer == "y"


class CallbackReply:
    """The core's `DecisionReply` for one `callback_query`: one answerCallbackQuery per
    press, whatever the core says (`finish` answers empty if nothing did yet)."""

    def __init__(
        self, bot: Any, query_id: str, chat_id: int | None, message_id: int | None
    ) -> None:
        self.bot = bot
        self.query_id = query_id
        self.chat_id = chat_id
        self.message_id = message_id
        self.answered = False

    async def notice(self, text: str) -> None:
        """An alert only the presser sees: the answer to the query. A second notice cannot
        be one (the query is answered) and is only logged."""
        if self.answered:
            log.info("telegram: a notice after the press was answered; not shown")
            return
        await self._answer(_cut(text, ALERT_LIMIT), alert=True)

    async def settle(self, text: str) -> None:
        """The spinner stopped first, then the request's message becomes the outcome; an
        edit without `reply_markup` takes the keyboard away."""
        await self.finish()
        if self.chat_id is None or self.message_id is None:
            log.warning("telegram: a press without its message; the request stays as it was")
            return
        rendered = to_telegram_html(text)
        try:
            await self._edit(rendered, ParseMode.HTML)
        except BadRequest as exc:
            if "parse entities" in exc.message:
                await self._edit(visible_text(rendered), None)
            elif "not modified" not in exc.message:
                raise

    async def finish(self) -> None:
        """Answer the query empty, unless it is answered already."""
        if not self.answered:
            await self._answer("", alert=False)

    async def _answer(self, text: str, *, alert: bool) -> None:
        self.answered = True  # before the await: a concurrent call answers nothing twice
        try:
            await self.bot.answer_callback_query(
                self.query_id, text=text or None, show_alert=alert or None
            )
        except TelegramError as exc:  # too late ("query is too old"): the decision still goes on
            log.warning("telegram: a button press could not be answered (%s)", exc.message)

    async def _edit(self, text: str, parse_mode: str | None) -> None:
        await self.bot.edit_message_text(
            text, chat_id=self.chat_id, message_id=self.message_id, parse_mode=parse_mode
        )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
