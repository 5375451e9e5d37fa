"""Markdown to Telegram HTML (parse_mode=HTML): the only escaping Telegram needs is &, <, >.

https://core.telegram.org/bots/api#html-style
"""

from __future__ import annotations

import html

from adapters.markdown import Style, render


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
