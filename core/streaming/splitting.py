"""Cut Markdown into parts that fit a platform's message limit, once for every platform.

The limit is what the platform counts once a part is rendered (Telegram: UTF-16 units of
the text after entity parsing; Slack: characters as shown; Discord: characters of the
Markdown), so the adapter gives a `measure` and the cut is searched for on the source:
a few renders of a prefix per part, each guess scaled by how the last one measured.

Cuts prefer a paragraph break, then a line break, then a space, and only where the two
halves render as the whole did (`faithful`): not inside `**bold text**` or a link, not where
the next part would start with `#`, `>`, `-` or `1.` that were plain text in the whole.
A cut inside a fenced code block is avoided when the block starts late enough in the part;
otherwise the fence is closed at the end of the part and reopened (with its language) at
the start of the next.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable

from markdown_it import MarkdownIt

Measure = Callable[[str], int]
"""What a platform counts against its limit for one part of Markdown, once rendered."""

FENCE = re.compile(r"^[ \t]*(```+|~~~+)(.*)$", re.MULTILINE)
_AFTER_LANGUAGE = re.compile(r"[ \t]*(?:`{3,}|~{3,})[ \t]*\S+[ \t]")
CLOSE_RESERVE = 4  # room for "\n```" when a fence must be closed at a cut
MAX_PROBES = 16  # measures of a prefix per part, at most (each renders it once)
MAX_CHECKS = 24  # candidate cuts checked for faithfulness per part, at most
CHECK_AHEAD = 2000  # characters after a cut parsed to find the block around it

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"]
)
_PARAGRAPH_TAGS = re.compile(r"</?p>|<br />|\s+")
_REJOINED = re.compile(
    r"</(ul|ol|blockquote)>\s*<\1(?: start=\"\d+\")?>"
    r"|</tbody>\s*</table>\s*<table>\s*<thead>.*?</thead>\s*<tbody>",
    re.DOTALL,
)
_LIST_TAG = re.compile(r"<(ol)(?: start=\"(\d+)\")?>|<ul>|</ol>|</ul>|<li>")
_ITEM = re.compile(r"( {0,3})(\d{1,9})([.)])(?=[ \t]|$)", re.MULTILINE)
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}


def open_fence(text: str) -> tuple[str, str, int] | None:
    """The fence still open at the end of `text`: (marker, language, start offset), or None.

    As CommonMark has it: a backtick fence's info has no backtick (else the line is inline
    code), and only a bare marker line closes a fence, so `~~~x~~~` inside a `~~~` block
    is code, not its end."""
    current: tuple[str, str, int] | None = None
    for match in FENCE.finditer(text):
        marker, info = match.group(1), match.group(2)
        if current is None:
            if marker[0] == "`" and "`" in info:
                continue
            words = info.split()
            current = (marker, words[0] if words else "", match.start())
        elif marker[0] == current[0][0] and len(marker) >= len(current[0]) and not info.strip():
            current = None
    return current


def _inside_fence_line(text: str, cut: int, fence: tuple[str, str, int]) -> bool:
    """Whether `cut` splits a fence line so that the halves render differently: the opening
    line before the end of its language (after it, the rest is reopened as more info), or
    a line that closes the fence."""
    line_start = text.rfind("\n", 0, cut) + 1
    if line_start <= fence[2]:
        return _AFTER_LANGUAGE.match(text, fence[2], cut) is None
    if line_start == cut:
        return False
    line_end = text.find("\n", cut)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    return open_fence(text[fence[2] : line_start] + line) is None


def _assemble(text: str, cut: int, *, renumber: bool = False) -> tuple[str, str]:
    """The part and the rest for a cut at `cut`; a fence open at the cut is closed in the
    part (at its own indentation) and reopened, with its language, in the rest. With
    `renumber`, a rest that starts an ordered list's item carries on its number."""
    head, rest = text[:cut], text[cut:]
    fence = open_fence(head)
    if fence is None:
        return head, _continued(text, cut, rest) if renumber else rest
    marker, language, start = fence
    indent = text[start : start + len(text[start:]) - len(text[start:].lstrip(" \t"))]
    closing = indent + marker if head.endswith("\n") else "\n" + indent + marker
    if "\n" not in head[start:]:  # cut in the info after the language: the rest is info too
        return head + closing, f"{indent}{marker}{language} {rest}"
    return head + closing, f"{indent}{marker}{language}\n{rest}"


def _continued(text: str, cut: int, rest: str) -> str:
    """`rest` made to continue what the cut interrupted: a list's numbering, a table's
    header."""
    return _with_table_header(text, cut, _renumbered(text, cut, rest))


def _with_table_header(text: str, cut: int, rest: str) -> str:
    """`rest` with the table's header and delimiter rows first, when the cut falls between
    two body rows of a table: the rows go on as a table in the next part, not as text."""
    if not cut or text[cut - 1] != "\n" or "|" not in rest[: rest.find("\n") + 1 or None]:
        return rest
    start = text.rfind("\n\n", 0, cut)
    start = 0 if start < 0 else start + 2  # a table holds no blank line: its block starts here
    block = text[start:cut]
    line = block.count("\n")
    for token in _parser.parse(block + rest[: rest.find("\n") + 1 or None]):
        # After a body row (+3): a cut right after the delimiter row would hand the whole
        # table back as the rest, and the splitter would never get anywhere.
        if token.type == "table_open" and token.map and token.map[0] + 3 <= line < token.map[1]:
            lines = block.split("\n")
            return f"{lines[token.map[0]]}\n{lines[token.map[0] + 1]}\n{rest}"
    return rest


def _renumbered(text: str, cut: int, rest: str) -> str:
    """`rest` with its first item numbered as in the whole, when the cut falls before an
    item of a top-level ordered list: a list reopened in the next part restarts at the
    number written in its source (`1.` for every item, as models often write), not at the
    number it was shown with."""
    item = _ITEM.match(rest)
    if item is None or (cut and text[cut - 1] != "\n"):
        return rest
    number = _item_number(text, cut)
    if number is None or number == int(item.group(2)):
        return rest
    return f"{item.group(1)}{number}{rest[item.end(2) :]}"


def _item_number(text: str, cut: int) -> int | None:
    """The number shown for the top-level ordered list item that starts at `cut`."""
    end = text.find("\n", cut)
    line = text.count("\n", 0, cut)
    counters: list[list[int] | None] = []  # per open list: [start, items so far]; None: bullets
    for token in _parser.parse(text[: end + 1] if end >= 0 else text):
        if token.type == "ordered_list_open":
            counters.append([int(token.attrGet("start") or 1), 0])
        elif token.type == "bullet_list_open":
            counters.append(None)
        elif token.type in ("ordered_list_close", "bullet_list_close") and counters:
            counters.pop()
        elif token.type == "list_item_open" and counters and counters[-1] is not None:
            counter = counters[-1]
            number = counter[0] + counter[1]
            counter[1] += 1
            if token.level == 1 and token.map and token.map[0] == line:
                return number
    return None


def _longest_fit(text: str, limit: int, measure: Measure) -> int:
    """The longest prefix (within a small tolerance) whose part measures within `limit`;
    `len(text)` when all of it does. The measure grows about linearly with the source, so
    each guess is scaled by the last ratio; bisection takes over when that does not help."""
    size_of_text = len(text)
    tolerance = max(8, limit // 64)
    lo, hi = 0, size_of_text + 1
    guess = min(size_of_text, limit)
    for _ in range(MAX_PROBES):
        size = measure(_assemble(text, guess)[0])
        if size <= limit:
            lo = guess
            if guess == size_of_text:
                return size_of_text
        else:
            hi = guess
        if hi - lo <= tolerance:
            break
        estimate = min(guess * limit // max(size, 1), size_of_text)
        if estimate == size_of_text and hi > size_of_text:
            guess = size_of_text  # all of it may fit (code info, link targets count 0)
            continue
        if not lo + tolerance // 2 < estimate < hi - tolerance // 2:
            estimate = (lo + hi) // 2
        guess = estimate
    return lo


def _grapheme_safe(text: str, cut: int) -> int:
    """`cut`, moved back so it does not split a combining mark or emoji sequence off."""
    floor = max(1, cut - 16)
    while cut > floor and (
        unicodedata.combining(text[cut])
        or text[cut] in _JOINERS
        or text[cut - 1] == "\u200d"
        or "\U0001f3fb" <= text[cut] <= "\U0001f3ff"
    ):
        cut -= 1
    return cut


def _candidates(text: str, end: int) -> list[int]:
    """Cut offsets at most `end`, best first: natural breaks in the second half of the
    window, then a hard cut at `end`, then natural breaks further back."""
    floor = end // 2
    near: list[int] = []
    far: list[int] = []
    for separator in ("\n\n", "\n", " "):
        at = end
        while True:
            at = text.rfind(separator, 0, at)
            if at <= 0:
                break
            (near if at >= floor else far).append(at + len(separator))
            if len(near) + len(far) > 4 * MAX_CHECKS:
                break
    hard = _grapheme_safe(text, end) if end < len(text) else end
    return list(dict.fromkeys(c for c in [*near, hard, *far] if 0 < c <= end))  # first of each


def _numbered(html: str) -> str:
    """`html` with each ordered item's number shown (`<li7>`), as every platform shows it:
    a list reopened at a cut restarts at the number written in its source."""
    out: list[str] = []
    numbers: list[int] = []  # per open list: the next number, 0 for a bullet list
    last = 0
    for match in _LIST_TAG.finditer(html):
        tag = match.group(0)
        out.append(html[last : match.start()])
        last = match.end()
        if match.group(1):
            numbers.append(int(match.group(2) or 1))
        elif tag == "<ul>":
            numbers.append(0)
        elif tag != "<li>":
            if numbers:
                numbers.pop()
        elif numbers and numbers[-1]:
            tag = f"<li{numbers[-1]}>"
            numbers[-1] += 1
        out.append(tag)
    out.append(html[last:])
    return "".join(out)


def _normal(html: str) -> str:
    """Markup compared for faithfulness: paragraphs, breaks and whitespace do not count, and
    a list or quote closed and reopened at a cut counts as one (if it numbers on)."""
    html = _numbered(html)
    while True:
        joined = _REJOINED.sub("", html)
        if joined == html:
            return _PARAGRAPH_TAGS.sub("", html)
        html = joined


class _Blocks:
    """The top-level Markdown blocks around the cuts being considered, parsed once."""

    def __init__(self, text: str, end: int) -> None:
        stop = text.find("\n", min(len(text), end + CHECK_AHEAD))
        self.text = text[: stop + 1] if stop >= 0 else text
        self.starts = [0, *(m.end() for m in re.finditer("\n", self.text))]
        tokens = _parser.parse(self.text)
        self.spans = [
            (t.map[0], t.map[1]) for t in tokens if t.level == 0 and t.map and t.nesting >= 0
        ]

    def faithful(self, cut: int) -> bool:
        """Whether the two sides of `cut` render as the block around it did."""
        fence = open_fence(self.text[:cut])
        if fence is not None:  # a code block is closed and reopened on purpose
            return not _inside_fence_line(self.text, cut, fence)
        line = bisect_right(self.starts, cut) - 1
        for first, last in self.spans:
            at_line_start = self.starts[line] == cut
            if first < line < last or (first == line and not at_line_start):
                start = self.starts[first]
                end = self.starts[last] if last < len(self.starts) else len(self.text)
                block, k = self.text[start:end], cut - start
                whole = _normal(_parser.render(block))
                rest = _continued(block, k, block[k:])
                split = _normal(_parser.render(block[:k]) + _parser.render(rest))
                return whole == split
        return True


def take_part(text: str, limit: int, measure: Measure = len) -> tuple[str, str]:
    """Split `text` into a part whose rendering measures within `limit` and the rest.

    The part is never empty; when a code block had to be split, the part ends by closing it
    and the rest begins by reopening it. A text that fits whole comes back as (text, "").
    """
    limit = max(limit, 2 * CLOSE_RESERVE + 2)
    end = _longest_fit(text, limit, measure)
    if end >= len(text):
        return text, ""
    for _ in range(4):
        cut = _choose(text, max(end, 1))
        part, rest = _assemble(text, cut, renumber=True)
        if len(rest) >= len(text):  # what a cut carries over must never undo the cut
            part, rest = _assemble(text, cut)
        if measure(part) <= limit or cut <= 1:
            return part, rest
        end = cut - 1  # the measure was not monotonic here: look further back
    return _assemble(text, _grapheme_safe(text, max(1, end // 2)), renumber=True)


def _choose(text: str, end: int) -> int:
    """The best faithful cut at most `end` (the best cut of all when none is faithful)."""
    fence = open_fence(text[:end])
    if fence is not None and fence[2] > end // 4:
        return fence[2]  # the block starts late enough: end the part before it
    candidates = _candidates(text, end)
    blocks = _Blocks(text, end)
    for cut in candidates[:MAX_CHECKS]:
        if blocks.faithful(cut):
            return cut
    return candidates[0] if candidates else end


def split_text(text: str, limit: int, measure: Measure = len) -> list[str]:
    """All the parts of `text`, each measuring within `limit`, none empty or whitespace only."""
    parts: list[str] = []
    rest = text
    while rest:
        part, rest = take_part(rest, limit, measure)
        if part.strip():
            parts.append(part)
    return parts
