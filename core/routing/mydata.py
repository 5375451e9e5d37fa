"""`/mydata`: a person takes out, or erases, what the bot keeps about them, from the chat.

Only in a private conversation (a DM, a private chat, the web channel, the terminal), so
nobody else sees the data. Erasing asks for a code sent back within five minutes (kept in
the store, so any replica can check it). The same as `chatbot privacy export|erase`.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from typing import Any
from urllib.parse import unquote

from core.model import ContextKey, MediaKind, Message, OutgoingFile, Turn
from core.protocols import MediaResponder, Responder
from core.routing.router import Route, command
from core.storage import CacheEntry, Person, Store
from core.streaming.reply import reply
from core.tools.approvals import PendingApproval

CONFIRM_SECONDS = 300
PRIVATE_ONLY = (
    "I only show or delete your data in a private conversation: send me /mydata in a direct "
    "message."
)
log = logging.getLogger(__name__)

HOW = "Send `/mydata` to see everything I keep about you, or `/mydata erase` to delete it."


class MyData:
    """The `/mydata` command over the store's port."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def route(self) -> Route:
        return Route("mydata", command("mydata"), self.handle)

    async def handle(self, message: Message, responder: Responder) -> None:
        if not message.private:
            await reply(responder, PRIVATE_ONLY)
            return
        person = Person(message.platform, message.user.id)
        words = (message.command.args if message.command else "").split()
        if not words or words[0] == "export":
            await self._export(person, responder)
        elif words[0] == "erase" and len(words) == 1:
            await reply(responder, await self._ask(person))
        elif words[0] == "erase":
            await reply(responder, await self._erase(person, words[1]))
        else:
            await reply(responder, HOW)

    async def _export(self, person: Person, responder: Responder) -> None:
        """A JSON file where the platform takes files (a DM, an ephemeral answer's DM, the web
        page's download); the same JSON in a message elsewhere (the terminal)."""
        body = json.dumps(await export_document(self.store, person), ensure_ascii=False, indent=1)
        if isinstance(responder, MediaResponder):
            file = OutgoingFile(
                body.encode(), "mydata.json", "application/json", MediaKind.DOCUMENT,
                caption=f"Everything I keep about you. {HOW}",
            )  # fmt: skip
            try:
                await responder.send_file(file)
                return
            except Exception as exc:  # the platform refused the file: the message still works
                log.warning("posting the export file failed: %s", type(exc).__name__)
        await reply(responder, f"Everything I keep about you:\n```json\n{body}\n```\n{HOW}")

    async def _ask(self, person: Person) -> str:
        code = secrets.token_hex(3)
        await self.store.remember(CacheEntry(_code_key(person), code, CONFIRM_SECONDS))
        return (
            "This deletes your conversations with me, your messages and my answers to them in "
            "shared channels, and your usage. It cannot be undone. To confirm, send "
            f"`/mydata erase {code}` within {CONFIRM_SECONDS // 60} minutes."
        )

    async def _erase(self, person: Person, code: str) -> str:
        expected = await self.store.cached(_code_key(person))
        if expected is None or not secrets.compare_digest(expected.encode(), code.encode()):
            return "That code is wrong or has expired: send `/mydata erase` for a new one."
        await self.store.remember(CacheEntry(_code_key(person), "", 1))  # used once
        erased = await self.store.erase(person)
        return (
            f"Done: I deleted {erased.conversations} conversation(s) of yours, "
            f"{erased.turns} message(s) and answers from shared ones, and your usage."
        )


async def export_document(store: Store, person: Person) -> dict[str, Any]:
    """Everything the store keeps about `person`, as JSON-ready data: their turns and the
    answers to them (with the images still kept, base64), their settings and usage."""
    data = await store.person(person)
    conversations: dict[str, list[dict[str, Any]]] = {}
    for conversation, turns in data.conversations.items():
        ids = [image.id for turn in turns for image in turn.images]
        kept = await store.images(_key_of(conversation), ids) if ids else {}
        conversations[conversation] = [_turn(turn, kept) for turn in turns]
    return {
        "platform": person.platform,
        "user": person.user,
        "conversations": conversations,
        "settings": data.settings,
        "pending_approvals": [_approval(raw) for raw in data.approvals],
        "usage": {
            period: {
                "prompt": t.prompt,
                "completion": t.completion,
                "total": t.total,
                "images": t.images,
            }
            for period, t in sorted(data.usage.items())
        },
    }


def _approval(raw: str) -> dict[str, Any]:
    pending = PendingApproval.from_json(raw)
    if pending is None:
        return {"unreadable": True}
    return {
        "tools": [call.name for call in pending.calls],
        "arguments": [_arguments(call.arguments) for call in pending.calls],
        "expires_at": pending.expires_at,
    }


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def _turn(turn: Turn, kept: dict[str, bytes]) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": turn.role, "text": turn.content}
    if turn.images:
        entry["images"] = [
            {
                "mime_type": image.mime_type,
                "data": base64.b64encode(kept[image.id]).decode() if image.id in kept else None,
            }
            for image in turn.images
        ]
    return entry


def _key_of(conversation_id: str) -> ContextKey:
    """The key whose `.id` is `conversation_id` (ids are five percent-escaped parts)."""
    parts = [unquote(part) if part != "-" else "" for part in conversation_id.split(":")]
    platform, workspace, channel, thread, user = (parts + [""] * 5)[:5]
    return ContextKey(platform, channel, user, workspace, thread)


def _code_key(person: Person) -> str:
    return f"mydata-erase:{json.dumps([person.platform, person.user])}"
