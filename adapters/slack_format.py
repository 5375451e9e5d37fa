"""Markdown to Slack mrkdwn: bold, italics, strike, code, links; &, <, > escaped.

Escaping `<` and `>` also neutralises `<!channel>`, `<!here>`, `<!everyone>` and `<@U123>`
mentions the model might write: Slack shows them as text and pings nobody.
https://api.slack.com/reference/surfaces/formatting#escaping

Slack has no escape for `*`, `_`, `~` and `` ` ``, so text the model meant literally (`\\*x\\*`,
`2*3*4` rendered as text) could turn bold in Slack. A zero-width space (U+200B, shown as
nothing) on both sides of each such character in text keeps it from opening or closing
formatting whichever way Slack classes that space (as a word character or as a space).
"""

from __future__ import annotations

import re

from adapters.markdown import Style, render

ZWSP = "\u200b"
_LITERAL = re.compile(r"([*_~`])")
_LINK = re.compile(r"<([^|>]*)(?:\|([^>]*))?>")


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(text: str) -> str:
    """Text as Slack shows it literally: escaped, and no formatting character left bare."""
    return _LITERAL.sub(ZWSP + r"\1" + ZWSP, escape_mrkdwn(text))


def _link(text: str, href: str) -> str:
    href = href.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{href}|{text}>" if text and text != href else f"<{href}>"


SLACK_MRKDWN = Style(
    escape=_text,
    bold=("*", "*"),
    italic=("_", "_"),
    strike=("~", "~"),
    code=lambda code: f"`{escape_mrkdwn(code)}`",
    pre=lambda code, language: f"```\n{escape_mrkdwn(code)}\n```",
    link=_link,
    quote_prefix="> ",
)


def to_mrkdwn(markdown: str) -> str:
    """Slack mrkdwn for `markdown`; never raises."""
    return render(markdown, SLACK_MRKDWN)


def shown_text(mrkdwn: str) -> str:
    """The characters Slack shows for our mrkdwn: a link as its label (or its address), an
    entity as its one character. Formatting characters are counted as if shown, which
    errs on the short side."""
    text = _LINK.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(1), mrkdwn)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def measure(markdown: str) -> int:
    """What counts against Slack's 4,000 characters for `markdown` sent as our mrkdwn."""
    return len(shown_text(to_mrkdwn(markdown)))
