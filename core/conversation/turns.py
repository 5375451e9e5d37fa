"""One id per turn, carried through every log line of that turn (a context variable)."""

from __future__ import annotations

import contextvars
import logging
import secrets

current_turn: contextvars.ContextVar[str] = contextvars.ContextVar("turn", default="-")


def new_turn_id() -> str:
    return secrets.token_hex(6)


class TurnIdFilter(logging.Filter):
    """Adds `record.turn` so formatters can print the current turn id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn = current_turn.get()
        return True
