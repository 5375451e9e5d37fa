"""Tools that act only after a person says yes, in the chat itself.

When the model asks for a tool marked `approve` (an action's `approve`, `tools.approve`
patterns, an MCP server's `approve`), the round of calls is held: the bot posts what it is
about to do with Approve and Deny buttons, the turn ends, and the conversation goes on
(nothing is locked while the person decides). The pending approval is kept in the store
(`tools.approval_ttl`, and a day more so a late press can be told it expired), so it
survives a restart and any replica can take the press. Only the person who asked, or an
admin of the platform, decides; the store's take is atomic, so two presses (or two replicas)
give one decision. The chat turn then runs the calls (or tells the model they were not run)
and the model continues the answer as a new message in the same place.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from core.codec import message_from_dict, plain, turn_from_dict, turn_to_dict
from core.config import Settings
from core.model import ApprovalRequest, Decision, Message, ToolCall, Turn, kept
from core.protocols import Approver, DecisionReply, Responder
from core.storage import Person, Store
from core.streaming.reply import reply

log = logging.getLogger(__name__)

Outcome = Literal["approved", "denied", "expired"]
LATE_GRACE = 86400  # seconds a decided-too-late request is kept to say it expired
ARGUMENT_CHARS = 1500  # of each call's arguments, shown in the request
GONE = "This request was already decided, or has expired."
CANNOT_ASK = "_({tools} needs a person's approval, which I cannot ask for here: not run.)_"


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """What the turn needs to go on once someone decides."""

    id: str
    message: Message  # the message that asked: where the answer goes, whose it is
    prompt: tuple[Turn, ...]  # up to and with the model's request for the calls
    calls: tuple[ToolCall, ...]
    model: str
    rounds: int  # tool rounds used so far (`tools.max_steps` bounds the whole answer)
    expires_at: float  # epoch seconds

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "message": plain(self.message),
                "prompt": [turn_to_dict(turn) for turn in self.prompt],
                "calls": [plain(call) for call in self.calls],
                "model": self.model,
                "rounds": self.rounds,
                "expires_at": self.expires_at,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> PendingApproval | None:
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(
                data["id"],
                message_from_dict(data["message"]),
                tuple(turn_from_dict(turn) for turn in data["prompt"]),
                tuple(ToolCall(**call) for call in data["calls"]),
                data["model"],
                int(data["rounds"]),
                float(data["expires_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class Approvals:
    """Asks for approvals and takes decisions, over the store."""

    def __init__(
        self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    @property
    def ttl(self) -> float:
        return self.settings.tools.approval_ttl

    async def ask(
        self,
        message: Message,
        responder: Responder,
        *,
        prompt: tuple[Turn, ...],
        calls: tuple[ToolCall, ...],
        model: str,
        rounds: int,
    ) -> str:
        """Post the request where the answer goes; the line the history keeps for it."""
        names = ", ".join(f"`{call.name}`" for call in calls)
        if not isinstance(responder, Approver):
            note = CANNOT_ASK.format(tools=names)
            await reply(responder, note)
            return note
        approval_id = secrets.token_urlsafe(12)
        pending = PendingApproval(
            approval_id, kept(message), prompt, calls, model, rounds,
            self.clock() + self.ttl,
        )  # fmt: skip
        person = Person(message.platform, message.user.id)
        await self.store.hold_approval(
            approval_id, person, pending.to_json(), int(self.ttl + LATE_GRACE)
        )
        request = ApprovalRequest(approval_id, self._describe(message, calls), calls[0].name)
        await responder.ask_approval(request)
        log.info("approval %s asked for %s", approval_id, ", ".join(c.name for c in calls))
        return f"[waiting for approval: {names}]"

    async def take(
        self, decision: Decision, answer: DecisionReply
    ) -> tuple[PendingApproval, Outcome] | None:
        """The pending approval and what was decided, once; None after telling the presser
        why nothing happens (not theirs, already decided, gone)."""
        raw = await self.store.approval(decision.approval_id)
        pending = PendingApproval.from_json(raw) if raw is not None else None
        if pending is None:
            await answer.notice(GONE)
            return None
        asker = pending.message.user
        if not self._may_decide(decision, pending):
            await answer.notice(f"This is not yours to decide: {asker.name or 'the asker'} "
                                "(or an admin) decides.")  # fmt: skip
            return None
        if await self.store.take_approval(decision.approval_id) is None:
            await answer.notice(GONE)  # another press (another replica) was first
            return None
        outcome: Outcome = "approved" if decision.approve else "denied"
        if self.clock() > pending.expires_at:
            outcome = "expired"
        names = ", ".join(f"`{call.name}`" for call in pending.calls)
        who = decision.user.name or decision.user.id
        settled = {
            "approved": f"✅ Approved by {who}: {names}",
            "denied": f"❌ Denied by {who}: {names} was not run.",
            "expired": f"⌛ This request expired: {names} was not run.",
        }[outcome]
        try:
            await answer.settle(settled)
        except Exception as exc:  # the buttons stay; the decision stands
            log.warning("could not update the approval message: %s", type(exc).__name__)
        log.info("approval %s %s", decision.approval_id, outcome)
        return pending, outcome

    def _may_decide(self, decision: Decision, pending: PendingApproval) -> bool:
        asker = pending.message
        if decision.platform != asker.platform:
            return False
        if decision.user.id == asker.user.id or decision.user.is_admin:
            return True
        return decision.user.id in self.settings.platforms.get(asker.platform).admins

    def _describe(self, message: Message, calls: tuple[ToolCall, ...]) -> str:
        lines = ["🔐 **Approval needed**"]
        for call in calls:
            lines += [f"I want to run `{call.name}` with:", "```json", _readable(call), "```"]
        minutes = max(1, round(self.ttl / 60))
        who = message.user.name or message.user.id
        lines.append(f"Asked by {who}; only they (or an admin) can decide, within {minutes} min.")
        return "\n".join(lines)


def not_run(calls: tuple[ToolCall, ...], outcome: Outcome) -> list[Turn]:
    """The tool results the model gets for calls a person did not approve."""
    why = "the user denied it" if outcome == "denied" else "the approval request expired"
    result = json.dumps({"error": f"not run: {why}"})
    return [Turn("tool", result, tool_call_id=call.id) for call in calls]


def _readable(call: ToolCall) -> str:
    try:
        text = json.dumps(json.loads(call.arguments or "{}"), ensure_ascii=False, indent=2)
    except ValueError:
        text = call.arguments
    if len(text) > ARGUMENT_CHARS:
        text = text[:ARGUMENT_CHARS] + "\n…"
    return text.replace("```", "`\u200b``")
