"""`/mydata`: a person takes out, or erases, what the bot keeps about them, from the chat.

Only in a private conversation (a DM, a private chat, the web channel, the terminal), so
nobody else sees the data. Erasing asks for a code sent back within five minutes (kept in
the store, so any replica can check it). The same as `chatbot privacy export|erase`.
"""

from __future__ import annotations

import json
import secrets

from core.model import Message
from core.protocols import Responder
from core.routing.router import Route, command
from core.storage import CacheEntry, Person, Store
from core.streaming.reply import reply

CONFIRM_SECONDS = 300
PRIVATE_ONLY = (
    "I only show or delete your data in a private conversation: send me /mydata in a direct "
    "message."
)
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
            await reply(responder, await self._export(person))
        elif words[0] == "erase" and len(words) == 1:
            await reply(responder, await self._ask(person))
        elif words[0] == "erase":
            await reply(responder, await self._erase(person, words[1]))
        else:
            await reply(responder, HOW)

    async def _export(self, person: Person) -> str:
        data = await self.store.person(person)
        document = {
            "conversations": {
                conversation: [{"role": t.role, "text": t.content} for t in turns]
                for conversation, turns in data.conversations.items()
            },
            "settings": data.settings,
            "usage": {period: t.total for period, t in sorted(data.usage.items())},
        }
        body = json.dumps(document, ensure_ascii=False, indent=1)
        return f"Everything I keep about you:\n```json\n{body}\n```\n{HOW}"

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


def _code_key(person: Person) -> str:
    return f"mydata-erase:{json.dumps([person.platform, person.user])}"
