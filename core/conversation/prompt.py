"""Build the prompt of one turn within the token budget.

Order: the persona's system prompt, the running summary (when there is one), then as many
of the most recent history turns as fit, then the user's new message. The oldest turns go
first; the system prompt and the new message are always sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.llm.tokens import TokenCounter
from core.model import Turn

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages to send and what they cost."""

    messages: list[Turn]
    tokens: int
    dropped: int  # history turns left out to fit the budget


def build_prompt(
    *,
    system: str,
    summary: str,
    history: Sequence[Turn],
    message: Turn,
    budget: int,
    max_turns: int,
    counter: TokenCounter,
) -> Prompt:
    """The prompt for `message`, newest history first to fill `budget`."""
    head = [Turn("system", system)]
    if summary:
        head.append(Turn("system", SUMMARY_PREFIX + summary))
    used = counter.turns(head) + counter.turn(message)
    recent = list(history[-max_turns:]) if max_turns else []
    kept: list[Turn] = []
    for turn in reversed(recent):
        cost = counter.turn(turn)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    # Never start the history with an assistant turn cut from its question.
    while kept and kept[0].role == "assistant":
        used -= counter.turn(kept.pop(0))
    return Prompt([*head, *kept, message], used, len(history) - len(kept))
