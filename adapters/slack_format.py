"""Markdown to Slack mrkdwn: bold, italics, strike, code, links; &, <, > escaped.

Escaping `<` and `>` also neutralises `<!channel>`, `<!here>`, `<!everyone>` and `<@U123>`
mentions the model might write: Slack shows them as text and pings nobody.
https://api.slack.com/reference/surfaces/formatting#escaping
"""

from __future__ import annotations

from adapters.markdown import Style, render


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(text: str, href: str) -> str:
    href = href.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
    return f"<{href}|{text}>" if text and text != href else f"<{href}>"


SLACK_MRKDWN = Style(
    escape=escape_mrkdwn,
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
