"""Cut Markdown into parts that fit a platform's message limit, once for every platform.

Cuts prefer a paragraph break, then a line break, then a space. A cut inside a fenced code
block is avoided when the block starts late enough in the part; otherwise the fence is
closed at the end of the part and reopened (with its language) at the start of the next.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*([^\s`]*)", re.MULTILINE)
CLOSE_RESERVE = 4  # room for "\n```" when a fence must be closed at a cut


def open_fence(text: str) -> tuple[str, str, int] | None:
    """The fence still open at the end of `text`: (marker, language, start offset), or None."""
    current: tuple[str, str, int] | None = None
    for match in FENCE.finditer(text):
        marker = match.group(1)
        if current is None:
            current = (marker, match.group(2), match.start())
        elif marker.startswith(current[0][0]) and len(marker) >= len(current[0]):
            current = None
    return current


def _best_cut(text: str, limit: int) -> int:
    """The offset to cut `text` at, at most `limit`, preferring natural breaks."""
    window = text[:limit]
    floor = limit // 2
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator, floor)
        if at > 0:
            return at + len(separator)
    return limit


def take_part(text: str, limit: int) -> tuple[str, str]:
    """Split `text` (longer than `limit`) into a part that fits and the rest.

    The part is never empty; when a code block had to be split, the part ends by closing it
    and the rest begins by reopening it.
    """
    if len(text) <= limit:
        return text, ""
    limit = max(limit, 2 * CLOSE_RESERVE + 2)
    cut = _best_cut(text, limit)
    fence = open_fence(text[:cut])
    if fence is None:
        return text[:cut], text[cut:]
    marker, language, start = fence
    if start > limit // 4:
        # The block starts late enough: end the part before it instead of splitting it.
        return text[:start], text[start:]
    cut = _best_cut(text, limit - CLOSE_RESERVE)
    head = text[:cut]
    closing = marker if head.endswith("\n") else "\n" + marker
    reopen = f"{marker}{language}\n"
    rest = text[cut:]
    return head + closing, reopen + rest


def split_text(text: str, limit: int) -> list[str]:
    """All the parts of `text`, each within `limit`, none empty or whitespace only."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        part, rest = take_part(rest, limit)
        if part.strip():
            parts.append(part)
    if rest.strip():
        parts.append(rest)
    return parts
