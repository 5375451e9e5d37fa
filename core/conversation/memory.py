"""Long memory: when a conversation outgrows the token budget, its oldest turns are folded
by the model into a running summary kept with the conversation, instead of being dropped.

It runs after the answer was sent, in a background task, so it never delays an answer.
The model call happens outside the conversation lock (the next turn need not wait for it);
the lock is taken only for the write, an atomic compare-and-trim: the summary replaces the
folded turns only if the history still starts with them. If anything fails, nothing is
written and the prompt keeps trimming the oldest turns to the budget, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from core.llm.tokens import TokenCounter
from core.model import ContextKey, Turn
from core.protocols import LLM, Usage
from core.sections import MemorySettings
from core.storage import Store

log = logging.getLogger(__name__)


def split_for_summary(
    turns: Sequence[Turn], keep_tokens: int, counter: TokenCounter
) -> tuple[list[Turn], list[Turn]]:
    """(turns to fold, turns to keep): the newest turns within `keep_tokens` stay, starting
    with a user turn; at least the last exchange stays."""
    kept, used = 0, 0
    for turn in reversed(turns):
        cost = counter.turn(turn)
        if used + cost > keep_tokens and kept >= 2:
            break
        kept += 1
        used += cost
    split = len(turns) - kept
    while split < len(turns) and turns[split].role != "user":
        split += 1  # never keep an answer without its question
    return list(turns[:split]), list(turns[split:])


def needs_summary(dropped: int, stored: int, max_turns: int) -> bool:
    """The prompt left turns out (budget passed), or the next save would push some out."""
    return dropped > 0 or stored + 2 > max_turns


class Summarizer:
    """Schedules and runs summaries; one at a time per conversation in this process."""

    def __init__(
        self,
        store: Store,
        llm: LLM,
        settings: MemorySettings,
        *,
        budget: int,
        counter: TokenCounter,
    ) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self.keep_tokens = settings.keep_tokens or max(budget // 2, 1)
        self.counter = counter
        self._running: dict[str, asyncio.Task[bool]] = {}
        self.written = 0  # summaries applied (for tests and metrics)
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.settings.summarize

    def schedule(self, key: ContextKey, stored: Sequence[Turn], summary: str, model: str) -> None:
        """Start a summary of `stored` (the history as saved) unless one runs for `key`."""
        name = key.id
        if name in self._running:
            return
        task = asyncio.create_task(self._guarded(key, stored, summary, model), name="summary")
        self._running[name] = task
        task.add_done_callback(lambda _: self._running.pop(name, None))

    async def _guarded(
        self, key: ContextKey, stored: Sequence[Turn], summary: str, model: str
    ) -> bool:
        try:
            return await self.summarise(key, stored, summary, model)
        except Exception:  # a bug here must never surface as an unretrieved task error
            self.failed += 1
            log.exception("summary task failed")
            return False

    async def summarise(
        self, key: ContextKey, stored: Sequence[Turn], summary: str, model: str
    ) -> bool:
        """Fold the oldest turns into the summary; True when it was written."""
        folded, _ = split_for_summary(stored, self.keep_tokens, self.counter)
        if not folded:
            return False
        try:
            async with asyncio.timeout(self.settings.timeout):
                completion = await self.llm.complete(
                    self._prompt(summary, folded),
                    model=self.settings.model or model,
                    max_tokens=self.settings.summary_words * 2 + 64,
                )
        except Exception as exc:  # an LLMError, a timeout: trimming goes on as before
            self.failed += 1
            log.warning("summary failed (%s); the oldest turns are trimmed instead", exc)
            return False
        text = completion.text.strip()
        if not text:
            self.failed += 1
            log.warning("the summary came back empty; the oldest turns are trimmed instead")
            return False
        async with self.store.lock(key):
            applied = await self.store.apply_summary(key, text, folded, completion.usage or Usage())
        if applied:
            self.written += 1
            log.info("summary written: %d turns folded", len(folded))
        else:
            log.info("summary skipped: the history changed meanwhile")
        return applied

    def _prompt(self, summary: str, folded: Sequence[Turn]) -> list[Turn]:
        instructions = self.settings.prompt.replace("{words}", str(self.settings.summary_words))
        lines = []
        for turn in folded:
            who = "Assistant" if turn.role == "assistant" else f"User ({turn.name or 'someone'})"
            lines.append(f"{who}: {turn.content}")
        body = f"Summary so far:\n{summary or '(none yet)'}\n\nNew messages:\n" + "\n".join(lines)
        return [Turn("system", instructions), Turn("user", body)]

    async def close(self, grace: float = 5.0) -> None:
        """Let running summaries finish within `grace` seconds, then cancel the rest."""
        tasks = list(self._running.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
