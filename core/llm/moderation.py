"""Moderation: the user's text goes to the OpenAI moderations endpoint before the chat call.

Flagged text gets a polite refusal and never reaches the chat model (nor the history). An
outage fails open or closed by config (`moderation.on_error`); it never stops the bot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from openai import AsyncOpenAI

from core.llm.openai_chat import describe_error
from core.sections import ModerationSettings

log = logging.getLogger(__name__)

REFUSAL = (
    "Sorry, I can't help with that message: it looks like it breaks the content rules. "
    "Could you put it another way?"
)
UNAVAILABLE = "Sorry, I can't check messages right now, so I can't answer. Please try again soon."


@dataclass(frozen=True, slots=True)
class Verdict:
    """A moderation answer: `flagged` with its categories, or `error` when the check failed."""

    flagged: bool
    categories: tuple[str, ...] = ()
    error: bool = False


class Moderator:
    """Checks one text; never raises. One call, no retries: a slow check delays the answer."""

    def __init__(self, client: AsyncOpenAI, settings: ModerationSettings) -> None:
        self.settings = settings
        self._client = client.with_options(max_retries=0, timeout=settings.timeout)

    async def check(self, text: str) -> Verdict:
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self._client.moderations.create(
                    input=text, model=self.settings.model
                )
        except Exception as exc:
            log.warning("moderation unavailable (%s); on_error=%s", describe_error(exc), self.mode)
            return Verdict(False, error=True)
        flagged = [result for result in response.results if result.flagged]
        if not flagged:
            return Verdict(False)
        categories = flagged[0].categories.model_dump(by_alias=True)
        names = tuple(sorted(name for name, hit in categories.items() if hit))
        log.info("moderation flagged the message: %s", ", ".join(names) or "unspecified")
        return Verdict(True, names)

    @property
    def mode(self) -> str:
        return self.settings.on_error

    def refusal(self, verdict: Verdict) -> str | None:
        """The reply that replaces the answer, or None when the chat may go on."""
        if verdict.flagged:
            return REFUSAL
        if verdict.error and self.settings.on_error == "refuse":
            return UNAVAILABLE
        return None
