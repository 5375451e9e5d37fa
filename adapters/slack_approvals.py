"""Approval requests as Slack Block Kit messages, and presses of their buttons as decisions.

A request is one message: its Markdown as mrkdwn `section`s (a section takes at most 3,000
characters, so a long request is cut at lines into several, a code block closed and reopened
across the cut), then an `actions` block with Approve (`primary`) and Deny (`danger`) whose
`value` is the request's id. https://docs.slack.dev/reference/block-kit/blocks/section-block,
https://docs.slack.dev/reference/block-kit/block-elements/button-element

A press arrives as a `block_actions` payload (https://docs.slack.dev/reference/interaction-payloads/block_actions-payload):
who pressed (`user`), where the message is (`container`: channel, message ts, thread ts), the
button (`actions[0]`), and a `response_url`. The presser is told alone with
`chat.postEphemeral` in the message's thread (the `response_url` if that fails), and the
request is settled with `chat.update`: the outcome as its only section, the buttons gone
(`blocks` must be sent: an update without them keeps the old ones).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_format import to_mrkdwn
from core.model import ApprovalRequest, Decision, User

log = logging.getLogger(__name__)

APPROVE = "approval_approve"
DENY = "approval_deny"
SECTION_LIMIT = 3000  # characters of a section's text
MAX_SECTIONS = 48  # a message holds at most 50 blocks; one is the buttons
TEXT_LIMIT = 4000  # the fallback `text`, as answers are cut
FENCE = "```"

Blocks = list[dict[str, Any]]


def _cut(line: str, size: int) -> list[str]:
    """`line` in pieces of at most `size`, none ending inside an entity (`&amp;`)."""
    pieces = []
    while len(line) > size:
        end = size
        amp = line.rfind("&", max(0, end - 5), end)  # the longest we write is `&amp;`
        if amp > 0 and ";" not in line[amp:end]:
            end = amp
        pieces.append(line[:end])
        line = line[end:]
    return [*pieces, line]


def sections(mrkdwn: str, limit: int = SECTION_LIMIT) -> list[str]:
    """`mrkdwn` in parts of at most `limit` characters, cut between lines (a longer line is
    cut where it must); a code block open at a cut is closed there and reopened after it."""
    room = limit - 2 * (len(FENCE) + 1)  # a part may need a fence at both ends
    parts: list[str] = []
    current, fenced = "", False
    for line in mrkdwn.split("\n"):
        for piece in _cut(line, room):
            candidate = f"{current}\n{piece}" if current else piece
            if current and len(candidate) + (len(FENCE) + 1 if fenced else 0) > limit:
                parts.append(current + (f"\n{FENCE}" if fenced else ""))
                candidate = f"{FENCE}\n{piece}" if fenced else piece
            current = candidate
        if line.strip().startswith(FENCE):
            fenced = not fenced
    if current.strip():
        parts.append(current)
    if len(parts) > MAX_SECTIONS:
        parts = [*parts[: MAX_SECTIONS - 1], "…"]
    return parts or [" "]


def request_message(request: ApprovalRequest) -> tuple[str, Blocks]:
    """The `text` (notifications, clients without blocks) and the blocks of a request."""
    mrkdwn = to_mrkdwn(request.text)
    blocks: Blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": part}} for part in sections(mrkdwn)
    ]
    blocks.append(
        {
            "type": "actions",
            "block_id": "approval",
            "elements": [
                _button("Approve", APPROVE, "primary", request.id),
                _button("Deny", DENY, "danger", request.id),
            ],
        }
    )
    text = mrkdwn if len(mrkdwn) <= TEXT_LIMIT else mrkdwn[: TEXT_LIMIT - 1] + "…"
    return text, blocks


def _button(label: str, action_id: str, style: str, value: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "style": style,
        "value": value,
        "text": {"type": "plain_text", "text": label},
    }


def settled_message(text: str) -> tuple[str, Blocks]:
    """The request once decided: the outcome alone, no buttons."""
    mrkdwn = to_mrkdwn(text)
    return mrkdwn, [{"type": "section", "text": {"type": "mrkdwn", "text": part}}
                    for part in sections(mrkdwn)]  # fmt: skip


def decision_from(body: dict[str, Any], admins: frozenset[str]) -> Decision | None:
    """The press a `block_actions` body carries; None when it is not one of our buttons."""
    actions = body.get("actions") or []
    action = actions[0] if actions and isinstance(actions[0], dict) else {}
    if action.get("action_id") not in (APPROVE, DENY) or not action.get("value"):
        return None
    user = _dict(body.get("user"))
    user_id = str(user.get("id") or "")
    if not user_id:
        return None
    name = str(user.get("username") or user.get("name") or user_id)
    return Decision(
        str(action["value"]),
        action["action_id"] == APPROVE,
        User(user_id, name, is_admin=user_id in admins),
        "slack",
    )


class SlackPressReply:
    """The `DecisionReply` of one press: the presser told alone, the request updated."""

    def __init__(
        self,
        client: AsyncWebClient,
        body: dict[str, Any],
        respond: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        self.client = client
        self.respond = respond
        container = _dict(body.get("container"))
        message = _dict(body.get("message"))
        self.channel = str(container.get("channel_id") or _dict(body.get("channel")).get("id"))
        self.ts = str(container.get("message_ts") or message.get("ts") or "")
        thread = container.get("thread_ts") or message.get("thread_ts")
        self.thread_ts = str(thread) if thread else None
        self.user = str(_dict(body.get("user")).get("id") or "")

    async def notice(self, text: str) -> None:
        mrkdwn = to_mrkdwn(text)
        try:
            await self.client.chat_postEphemeral(
                channel=self.channel, user=self.user, text=mrkdwn, thread_ts=self.thread_ts
            )
            return
        except SlackApiError as exc:
            if self.respond is None:
                raise
            log.info("slack: chat.postEphemeral refused (%s); using the response_url",
                     exc.response.get("error"))  # fmt: skip
        await self.respond(text=mrkdwn, response_type="ephemeral", replace_original=False)

    async def settle(self, text: str) -> None:
        fallback, blocks = settled_message(text)
        await self.client.chat_update(channel=self.channel, ts=self.ts, text=fallback,
                                      blocks=blocks)  # fmt: skip


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
