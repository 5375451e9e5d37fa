"""Markdown to Telegram HTML (parse_mode=HTML): the only escaping Telegram needs is &, <, >.

Telegram's 4096 limit counts the text after entity parsing, in UTF-16 code units, so
`measure` strips the tags, resolves the entities and counts UTF-16 units.
https://core.telegram.org/bots/api#html-style
https://core.telegram.org/bots/api#sendmessage (text: 1-4096 characters after entities parsing)
"""

from __future__ import annotations

import html
import re

from adapters.markdown import Style, render

_TAG = re.compile(r"<[^>]*>")


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _pre(code: str, language: str) -> str:
    if language:
        return f'<pre><code class="language-{html.escape(language)}">{_escape(code)}</code></pre>'
    return f"<pre>{_escape(code)}</pre>"


TELEGRAM_HTML = Style(
    escape=_escape,
    bold=("<b>", "</b>"),
    italic=("<i>", "</i>"),
    strike=("<s>", "</s>"),
    code=lambda code: f"<code>{_escape(code)}</code>",
    pre=_pre,
    link=lambda text, href: f'<a href="{html.escape(href, quote=True)}">{text}</a>',
    quote_prefix="┃ ",
)


def to_telegram_html(markdown: str) -> str:
    """Telegram HTML for `markdown`; never raises."""
    return render(markdown, TELEGRAM_HTML)


def visible_text(telegram_html: str) -> str:
    """The text Telegram shows for our HTML: what counts against the limit, and what is sent
    as plain text when Telegram rejects the markup. (Our renderer escapes every `<` and `>`
    in text and attributes, so a tag is exactly `<…>`.)"""
    return html.unescape(_TAG.sub("", telegram_html))


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts (an emoji outside the BMP is 2)."""
    return len(text.encode("utf-16-le")) // 2


def measure(markdown: str) -> int:
    """What Telegram counts against its limit for `markdown` sent as our HTML."""
    return utf16_len(visible_text(to_telegram_html(markdown)))
