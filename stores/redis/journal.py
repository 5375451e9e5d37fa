"""The answer journal: messages being answered, kept in Redis so a crash loses none.

A chat turn writes its message into its conversation's journal in the same pipeline as its
history read, and removes it in the same MULTI/EXEC as its history write, so the journal
costs no extra round trip and "answered" and "recorded" change together. Each process keeps
a heartbeat key alive; after a crash (SIGKILL, OOM, power loss) the heartbeat expires, and at
its next start any process claims the dead owner's entries (HDEL is the atomic claim, so
several replicas never take the same one) and answers them. Entries in release 0.1's single
journal hash are still answered.
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

from core.model import Attachment, Command, ContextKey, Message, User
from stores.redis.health import FAILURES
from stores.redis.keys import KeyBuilder
from stores.redis.scripts import JOURNAL_CLAIM

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


class RedisJournal:
    """Entries `platform:channel:message_id` -> {owner, since, message} in each
    conversation's journal hash (its slot: the entry rides in the turn's read and leaves in
    its MULTI), and per owner a set of the journals where it has entries, so recovery finds a
    dead owner's entries without scanning."""

    def __init__(self, redis: Any, keys: KeyBuilder, *, heartbeat_ttl: float = 15.0) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = secrets.token_hex(8)
        self.heartbeat_ttl = heartbeat_ttl
        self._beating: asyncio.Task[None] | None = None

    @staticmethod
    def entry_id(message: Message) -> str:
        return f"{message.platform}:{message.key.channel}:{message.message_id}"

    def queue_begin(self, pipe: Any, key: ContextKey, message: Message) -> None:
        """Two commands: record `message` as being answered, and where (this owner's index)."""
        payload = json.dumps(
            {"owner": self.owner, "since": time.time(), "message": message_to_json(message)}
        )
        journal = self.keys.journal(key)
        pipe.hset(journal, self.entry_id(message), payload)
        pipe.sadd(self.keys.journal_index(self.owner), journal)

    def queue_end_entry(self, pipe: Any, key: ContextKey, message: Message) -> None:
        """`message` is answered (in the conversation's slot: the turn's MULTI)."""
        pipe.hdel(self.keys.journal(key), self.entry_id(message))

    def queue_end_index(self, pipe: Any, key: ContextKey) -> None:
        """This owner has no entry left in the conversation's journal (one turn at a time per
        conversation: the one that ended was its only one)."""
        pipe.srem(self.keys.journal_index(self.owner), self.keys.journal(key))

    async def forget(self, key: ContextKey, message: Message) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_end_entry(pipe, key, message)
            self.queue_end_index(pipe, key)
            await pipe.execute()

    async def start(self) -> None:
        """Announce this process as alive and keep it so."""
        try:
            await self.redis.sadd(self.keys.journal_owners(), self.owner)
            await self._beat()
        except FAILURES as exc:
            log.warning("journal heartbeat not written: %s", type(exc).__name__)
        self._beating = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        with contextlib.suppress(*FAILURES):
            await self.redis.delete(self.keys.owner(self.owner))

    async def _beat(self) -> None:
        await self.redis.set(self.keys.owner(self.owner), "1", px=int(self.heartbeat_ttl * 1000))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ttl / 3)
            try:
                await self._beat()
            except FAILURES as exc:
                log.debug("journal heartbeat failed: %s", type(exc).__name__)

    async def claim(self, journal: str, entry: str | bytes) -> bool:
        """Take one entry: True for exactly one claimant, also when the claim's reply came
        late and redis-py sent it again (the entry is gone by then: the claim key says whose
        it was). Raises RedisError/OSError."""
        name = _text(entry)
        token = secrets.token_hex(8)  # per claim: only this claim's resend may match it
        claimed_by = f"{journal}:claimed:{name}"
        return bool(await self.redis.eval(JOURNAL_CLAIM, 2, journal, claimed_by, name, token))

    async def claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        """Take the entries of `platforms` whose owner is gone; each goes to one claimant."""
        try:
            return await self._claim_orphans(platforms)
        except FAILURES as exc:
            log.warning("journal unreadable: %s", type(exc).__name__)
            return []

    async def _claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        claimed: list[Message] = []
        owners = {_text(o) for o in await self.redis.smembers(self.keys.journal_owners())}
        for owner in owners - {self.owner}:
            if await self.redis.exists(self.keys.owner(owner)):
                continue  # a live process is answering its entries
            index = self.keys.journal_index(owner)
            left = 0
            for journal in {_text(j) for j in await self.redis.smembers(index)}:
                kept = await self._claim_in(journal, {owner}, platforms, claimed)
                if kept:
                    left += 1
                else:
                    await self.redis.srem(index, journal)
            if not left:
                await self.redis.srem(self.keys.journal_owners(), owner)
        if not self.cluster_mode:
            await self._claim_in(self.keys.legacy_journal(), None, platforms, claimed)
        return claimed

    @property
    def cluster_mode(self) -> bool:
        """Release 0.1's single journal hash cannot exist on a Cluster (it was not supported)."""
        return type(self.redis).__name__ == "RedisCluster"

    async def _claim_in(
        self,
        journal: str,
        owners: set[str] | None,
        platforms: Collection[str],
        claimed: list[Message],
    ) -> int:
        """Claim the dead owners' entries of one journal hash (`owners` None: any dead owner);
        how many of theirs are left (other platforms)."""
        left = 0
        alive: dict[str, bool] = {}
        for raw_entry, raw_value in (await self.redis.hgetall(journal)).items():
            try:
                value = json.loads(raw_value)
                owner = value["owner"]
            except (ValueError, KeyError, TypeError):
                await self.redis.hdel(journal, raw_entry)
                continue
            if owner == self.owner or (owners is not None and owner not in owners):
                continue
            if owners is None:
                if owner not in alive:
                    alive[owner] = bool(await self.redis.exists(self.keys.owner(owner)))
                if alive[owner]:
                    continue
            if _platform(raw_entry) not in platforms:
                left += 1
                continue
            if not await self.claim(journal, raw_entry):
                continue  # another replica claimed it first
            message = message_from_json(value["message"])
            if message is not None:
                claimed.append(message)
        return left


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _platform(entry: str | bytes) -> str:
    return _text(entry).split(":", 1)[0]
