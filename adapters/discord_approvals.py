"""Discord's approval buttons: the request message's Approve and Deny, a press read back from
its `custom_id`, and the answer to the press (`DecisionReply`).

The buttons carry everything a press needs in their `custom_id` (`approval:<id>:yes`), so no
process keeps a view for them: the adapter reads every component interaction in
`on_interaction` (discord.py dispatches it for each INTERACTION_CREATE), and a process started
after the request was posted takes its presses like the one that posted it.
https://discord.com/developers/docs/interactions/message-components#custom-id
"""

from __future__ import annotations

import re
from collections.abc import Collection

import discord

from core.model import Decision, User

LIMIT = 2000
CUSTOM_ID_LIMIT = 100  # Discord refuses a longer custom_id
PREFIX = "approval"
PATTERN = re.compile(rf"{PREFIX}:(?P<id>[A-Za-z0-9_-]+):(?P<choice>yes|no)")
NO_PINGS = discord.AllowedMentions.none()  # every message the bot sends: nobody is pinged
UNHANDLED = "Approvals are not taken here right now; please ask again later."


def custom_id(approval_id: str, approve: bool) -> str:
    """The button's `custom_id`; raises ValueError for an id Discord could not carry (the
    core then says it could not ask)."""
    value = f"{PREFIX}:{approval_id}:{'yes' if approve else 'no'}"
    if len(value) > CUSTOM_ID_LIMIT or not PATTERN.fullmatch(value):
        raise ValueError("the approval id does not fit in a Discord custom_id")
    return value


def parse(value: object) -> tuple[str, bool] | None:
    """The approval id and the choice of one of our buttons' `custom_id`; None for any other
    component (or a malformed payload)."""
    if not isinstance(value, str):
        return None
    match = PATTERN.fullmatch(value)
    if match is None:
        return None
    return match["id"], match["choice"] == "yes"


def approval_view(approval_id: str) -> discord.ui.View:
    """One action row: Approve (green) and Deny (red).

    The view is a picture of the buttons, not a listener: it is stopped before it is sent, so
    discord.py does not keep it per message (a view with `timeout=None` would stay for the
    life of the process); presses reach the adapter's `on_interaction` instead."""
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(style=discord.ButtonStyle.success, label="Approve",
                                    custom_id=custom_id(approval_id, True)))  # fmt: skip
    view.add_item(discord.ui.Button(style=discord.ButtonStyle.danger, label="Deny",
                                    custom_id=custom_id(approval_id, False)))  # fmt: skip
    view.stop()
    return view


def fit(text: str, limit: int = LIMIT) -> str:
    """`text` (Markdown, which Discord renders itself) within `limit` characters. A request
    too long loses the end of its middle, not its last line (who decides, until when); a code
    block cut open is closed."""
    if len(text) <= limit:
        return text
    head, _, last = text.rpartition("\n")
    if not head or len(last) > limit // 2:
        head, last = text, ""
    tail = "\n…" + (f"\n{last}" if last else "")
    cut = head[: limit - len(tail) - len("\n```")]
    if cut.count("```") % 2:
        cut += "\n```"
    return cut + tail


def decision_of(
    interaction: discord.Interaction, approval_id: str, approve: bool, admins: Collection[str]
) -> Decision:
    """The core's `Decision` for a press. An admin is one listed in `platforms.discord.admins`,
    as for messages: a server's Administrators are not the bot's admins."""
    user = interaction.user
    user_id = str(user.id)
    is_admin = user_id in admins  # as for messages: the bot's admins, not the server's
    person = User(user_id, user.display_name, is_admin=is_admin)
    return Decision(approval_id, approve, person, "discord")


class ButtonReply:
    """The answer to one press, after the adapter deferred it (callback type 6, within
    Discord's 3 s; the buttons keep their message): a notice is an ephemeral follow-up, the
    outcome edits the request's message (the interaction's original response for a component)
    and removes its buttons."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction

    async def notice(self, text: str) -> None:
        await self.interaction.followup.send(fit(text), ephemeral=True, allowed_mentions=NO_PINGS)

    async def settle(self, text: str) -> None:
        await self.interaction.edit_original_response(
            content=fit(text), view=None, allowed_mentions=NO_PINGS
        )
