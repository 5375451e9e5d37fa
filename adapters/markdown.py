"""Markdown as models write it, parsed once (markdown-it-py) and rendered per platform.

Each platform gives a `Style`: how to escape text and how to write bold, italics, strike,
code, code blocks and links. Headings become bold lines, lists become bullet or numbered
lines, tables become an aligned monospace block, raw HTML is shown as text. Parsing never
fails, so hostile input (unmatched `*`, `_`, backticks, `<`, `&`) always renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

SAFE_SCHEMES = ("http://", "https://", "mailto:")
"""The only link targets rendered as links anywhere: `tg://user?id=…` would mention (ping)
someone in Telegram, `slack://` opens things; any other target is shown as its text."""

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"]
)


@dataclass(frozen=True)
class Style:
    """How one platform writes each construct."""

    escape: Callable[[str], str]
    bold: tuple[str, str]
    italic: tuple[str, str]
    strike: tuple[str, str]
    code: Callable[[str], str]
    pre: Callable[[str, str], str]
    link: Callable[[str, str], str]
    quote_prefix: str = "> "
    bullet: str = "•"


def render(markdown: str, style: Style) -> str:
    """`markdown` in the platform's markup."""
    tokens = _parser.parse(markdown)
    return _Renderer(style).blocks(tokens).strip()


class _Renderer:
    def __init__(self, style: Style) -> None:
        self.style = style
        self.out: list[str] = []
        self.lists: list[list[int]] = []  # [ordered (0/1), next number]
        self.quote = 0

    def _line_start(self) -> str:
        return self.style.quote_prefix * self.quote

    def blocks(self, tokens: Sequence[Token]) -> str:
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            if kind == "table_open":
                end = next(i for i in range(index, len(tokens)) if tokens[i].type == "table_close")
                self.out.append(self._table(tokens[index : end + 1]))
                index = end + 1
                continue
            self._block(token)
            index += 1
        return "".join(self.out)

    def _block(self, token: Token) -> None:
        kind, s = token.type, self.style
        if kind == "heading_open":
            self.out.append(self._line_start() + s.bold[0])
        elif kind == "heading_close":
            self.out.append(s.bold[1] + "\n\n")
        elif kind == "paragraph_open":
            if not self.lists:
                self.out.append(self._line_start())
        elif kind == "paragraph_close":
            self.out.append("\n" if token.hidden else "\n\n")
        elif kind in ("bullet_list_open", "ordered_list_open"):
            start = int(token.attrGet("start") or 1)
            self.lists.append([1 if kind == "ordered_list_open" else 0, start])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
            if not self.lists:
                self.out.append("\n")
        elif kind == "list_item_open":
            ordered, number = self.lists[-1]
            marker = f"{number}." if ordered else s.bullet
            self.lists[-1][1] += 1
            indent = "   " * (len(self.lists) - 1)
            self.out.append(self._line_start() + indent + marker + " ")
        elif kind in ("fence", "code_block"):
            language = token.info.strip().split(" ")[0] if token.info else ""
            self.out.append(s.pre(token.content.rstrip("\n"), language) + "\n\n")
        elif kind == "blockquote_open":
            self.quote += 1
        elif kind == "blockquote_close":
            self.quote -= 1
        elif kind == "hr":
            self.out.append("──────────\n\n")
        elif kind == "inline":
            self.out.append(self.inline(token.children or []))
        elif kind == "html_block":
            self.out.append(s.escape(token.content))

    def inline(self, children: Sequence[Token]) -> str:
        s = self.style
        parts: list[str] = []
        links: list[tuple[int, str]] = []
        for child in children:
            kind = child.type
            if kind == "text":
                parts.append(s.escape(child.content))
            elif kind == "strong_open":
                parts.append(s.bold[0])
            elif kind == "strong_close":
                parts.append(s.bold[1])
            elif kind == "em_open":
                parts.append(s.italic[0])
            elif kind == "em_close":
                parts.append(s.italic[1])
            elif kind == "s_open":
                parts.append(s.strike[0])
            elif kind == "s_close":
                parts.append(s.strike[1])
            elif kind == "code_inline":
                parts.append(s.code(child.content))
            elif kind in ("softbreak", "hardbreak"):
                parts.append("\n" + self._line_start())
            elif kind == "link_open":
                links.append((len(parts), str(child.attrGet("href") or "")))
            elif kind == "link_close" and links:
                start, href = links.pop()
                text = "".join(parts[start:])
                del parts[start:]
                parts.append(s.link(text, href) if _safe(href) else text)
            elif kind == "image":
                src = str(child.attrGet("src") or "")
                alt = s.escape(child.content or "image")
                parts.append(s.link(alt, src) if _safe(src) else alt)
            else:  # html_inline and anything new: shown as text
                parts.append(s.escape(child.content))
        return "".join(parts)

    def _table(self, tokens: Sequence[Token]) -> str:
        rows: list[list[str]] = []
        for token in tokens:
            if token.type == "tr_open":
                rows.append([])
            elif token.type == "inline" and rows:
                rows[-1].append(_plain(token.children or []))
        if not rows:
            return ""
        widths = [
            max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))
        ]
        lines = [
            " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
        ]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        return self.style.pre("\n".join(lines), "") + "\n\n"


def _safe(href: str) -> bool:
    return href.lower().startswith(SAFE_SCHEMES)


def _plain(children: Sequence[Token]) -> str:
    return "".join(child.content for child in children if child.type in ("text", "code_inline"))
