"""The answer journal: messages being answered, kept in Redis so a crash loses none.

A chat turn writes its message into the journal in the same pipeline as its history read,
and removes it in the same MULTI/EXEC as its history write, so the journal costs no extra
round trip and "answered" and "recorded" change together. Each process keeps a heartbeat
key alive; after a crash (SIGKILL, OOM, power loss) the heartbeat expires, and at its next
start any process claims the dead owner's entries (HDEL is the atomic claim, so several
replicas never take the same one) and answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Collection
from dataclasses import fields, is_dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.keys import KeyBuilder
from core.model import Attachment, Command, ContextKey, Message, User

log = logging.getLogger(__name__)


def message_to_json(message: Message) -> str:
    return json.dumps(_plain(message), ensure_ascii=False, separators=(",", ":"))


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` without its deep copy of every leaf value (the message is frozen
    and only serialised): a third of the journal's cost per message (`python -m bench`)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def message_from_json(raw: str | bytes) -> Message | None:
    try:
        data = json.loads(raw)
        command = data.get("command")
        return Message(
            platform=data["platform"],
            key=ContextKey(**data["key"]),
            user=User(**data["user"]),
            text=data["text"],
            message_id=data["message_id"],
            addressed=data.get("addressed", True),
            command=Command(**command) if command else None,
            attachments=tuple(Attachment(**a) for a in data.get("attachments", ())),
        )
    except (ValueError, KeyError, TypeError):
        return None


# KEYS: the journal, this entry's claim. ARGV: the entry, the claim's token. 1: claimed by us.
CLAIM = """
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', 3600)
return 1
"""


class Journal:
    """Entries `platform:message_id` -> {owner, since, message} in one Redis hash."""

    def __init__(self, redis: Redis, prefix: str, *, heartbeat_ttl: float = 15.0) -> None:
        self.redis = redis
        self.key = f"{prefix}:journal"
        self.owner = secrets.token_hex(8)
        self._keys = KeyBuilder(prefix)  # the heartbeat keys (the intake reads them too)
        self.heartbeat_ttl = heartbeat_ttl
        self._beating: asyncio.Task[None] | None = None

    @staticmethod
    def entry_id(message: Message) -> str:
        return f"{message.platform}:{message.key.channel}:{message.message_id}"

    def begin(self, message: Message) -> Any:
        """A pipeline command (a `Queue`) that records `message` as being answered."""
        payload = json.dumps(
            {"owner": self.owner, "since": time.time(), "message": message_to_json(message)}
        )
        entry = self.entry_id(message)
        return lambda pipe: pipe.hset(self.key, entry, payload)

    def end(self, message: Message) -> Any:
        """A pipeline command (a `Queue`) that marks `message` answered."""
        entry = self.entry_id(message)
        return lambda pipe: pipe.hdel(self.key, entry)

    async def start(self) -> None:
        """Announce this process as alive and keep it so."""
        try:
            await self._beat()
        except (RedisError, OSError) as exc:
            log.warning("journal heartbeat not written: %s", type(exc).__name__)
        self._beating = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._keys.owner(self.owner))

    async def _beat(self) -> None:
        await self.redis.set(self._keys.owner(self.owner), "1", px=int(self.heartbeat_ttl * 1000))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ttl / 3)
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                log.debug("journal heartbeat failed: %s", type(exc).__name__)

    async def claim(self, entry: str | bytes) -> bool:
        """Take one entry: True for exactly one claimant, also when the claim's reply came
        late and redis-py sent it again (the entry is gone by then: the claim key says whose
        it was). Raises RedisError/OSError."""
        name = entry.decode() if isinstance(entry, bytes) else entry
        claimed_by = f"{self.key}:claimed:{name}"
        token = secrets.token_hex(8)  # per claim: only this claim's resend may match it
        return bool(await self.redis.eval(CLAIM, 2, self.key, claimed_by, name, token))

    async def claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        """Take the entries of `platforms` whose owner is gone; each goes to one claimant."""
        try:
            entries = await self.redis.hgetall(self.key)
        except (RedisError, OSError) as exc:
            log.warning("journal unreadable: %s", type(exc).__name__)
            return []
        owners: dict[str, bool] = {}
        claimed: list[Message] = []
        for raw_entry, raw_value in entries.items():
            try:
                value = json.loads(raw_value)
                owner = value["owner"]
            except (ValueError, KeyError, TypeError):
                await self.redis.hdel(self.key, raw_entry)
                continue
            if owner == self.owner or _platform(raw_entry) not in platforms:
                continue
            if owner not in owners:
                owners[owner] = bool(await self.redis.exists(self._keys.owner(owner)))
            if owners[owner]:
                continue  # a live process is answering it
            if not await self.claim(raw_entry):
                continue  # another replica claimed it first
            message = message_from_json(value["message"])
            if message is not None:
                claimed.append(message)
        return claimed


def _platform(entry: str | bytes) -> str:
    text = entry.decode("utf-8", "replace") if isinstance(entry, bytes) else entry
    return text.split(":", 1)[0]
