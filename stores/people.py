"""Whose turns are whose: what an export shows and an erasure removes, the same in every
store."""

from __future__ import annotations

from collections.abc import Sequence

from core.model import Turn


def theirs(history: Sequence[Turn], user: str) -> list[Turn]:
    """A person's turns in a history and the answer right after each (an answer that names
    its own person, one continued after an approval, is that person's)."""
    found: list[Turn] = []
    for i, turn in enumerate(history):
        if turn.user == user:
            found.append(turn)
            after = history[i + 1] if i + 1 < len(history) else None
            if after is not None and after.role == "assistant" and not after.user:
                found.append(after)
    return found
