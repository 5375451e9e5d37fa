"""The answer journal: messages being answered, kept in Redis so a crash loses none.

A chat turn writes its message into its process's journal in the same pipeline as its
history read, and removes it in the same MULTI/EXEC as its history write, so the journal
costs no extra round trip and "answered" and "recorded" change together (on a Cluster the
entry leaves just after the write landed). Each process keeps
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
from dataclasses import replace
from typing import Any

from core.codec import message_from_json, message_to_json
from core.model import Message
from stores.redis.health import FAILURES
from stores.redis.keys import KeyBuilder
from stores.redis.scripts import JOURNAL_CLAIM

log = logging.getLogger(__name__)


class RedisJournal:
    """Entries `platform:channel:message_id` -> {owner, since, message}, one hash per process
    (`{prefix}:journal:{<owner>}`): an entry is one command in the turn's read and one in its
    write, and recovery reads a dead process's hash whole. Every heartbeat also registers the
    owner in the owners set, so an owner pruned while it was silent (Redis away, a stalled
    loop) is found again."""

    def __init__(self, redis: Any, keys: KeyBuilder, *, heartbeat_ttl: float = 15.0) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = secrets.token_hex(8)
        self.key = keys.journal(self.owner)
        self.heartbeat_ttl = heartbeat_ttl
        self._beating: asyncio.Task[None] | None = None
        self._stopping = False

    @staticmethod
    def entry_id(message: Message) -> str:
        return f"{message.platform}:{message.key.channel}:{message.message_id}"

    def queue_begin(self, pipe: Any, message: Message) -> None:
        """Record `message` as being answered (one command, riding in the turn's read)."""
        payload = json.dumps(
            {"owner": self.owner, "since": time.time(), "message": message_to_json(message)}
        )
        pipe.hset(self.key, self.entry_id(message), payload)

    def queue_end(self, pipe: Any, message: Message) -> None:
        """`message` is answered (one command, riding in the turn's write)."""
        pipe.hdel(self.key, self.entry_id(message))

    async def forget(self, message: Message) -> None:
        """Drop `message`'s entry (logged, never raised)."""
        try:
            await self.redis.hdel(self.key, self.entry_id(message))
        except FAILURES as exc:
            log.warning("journal entry not removed: %s", type(exc).__name__)

    async def start(self) -> None:
        """Announce this process as alive and keep it so."""
        try:
            await self._beat()
        except FAILURES as exc:
            log.warning("journal heartbeat not written: %s", type(exc).__name__)
        self._beating = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        """Stop beating; leave the owners set unless entries wait for another process.

        A cancel that lands inside a Redis call can be turned into a connection error there
        (and so be swallowed by the loop's error handling): the loop also ends on a flag, and
        the wait is bounded. A stop that waited forever on it kept a bot alive after SIGTERM."""
        beating, self._beating = self._beating, None
        if beating is not None:
            self._stopping = True
            beating.cancel()
            await asyncio.wait({beating}, timeout=self.heartbeat_ttl)
            if not beating.done():
                log.warning("the journal's heartbeat did not stop; going on without it")
        with contextlib.suppress(*FAILURES):
            await self.redis.delete(self.keys.owner(self.owner))
            if not await self.redis.exists(self.key):
                await self.redis.srem(self.keys.journal_owners(), self.owner)

    async def _beat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.owner(self.owner), "1", px=int(self.heartbeat_ttl * 1000))
            pipe.sadd(self.keys.journal_owners(), self.owner)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.heartbeat_ttl / 3)
            try:
                await self._beat()
            except FAILURES as exc:
                log.debug("journal heartbeat failed: %s", type(exc).__name__)

    async def claim(self, journal: str, entry: str | bytes) -> bool:
        """Take one entry: True for exactly one claimant, also when the claim's reply came
        late and redis-py sent it again (the entry is gone by then: the claim key says whose
        it was). Raises what Redis raises (`FAILURES`)."""
        name = _text(entry)
        token = secrets.token_hex(8)  # per claim: only this claim's resend may match it
        # the claim key shares the journal's slot (its hash tag, or the whole name as the tag)
        # and starts with the deployment's prefix like every key
        tagged = journal if "{" in journal else f"{self.keys.prefix}:{{{journal}}}"
        claimed_by = f"{tagged}:claimed:{name}"
        return bool(await self.redis.eval(JOURNAL_CLAIM, 2, journal, claimed_by, name, token))

    async def claim_orphans(self, platforms: Collection[str]) -> list[Message]:
        """Take the entries of `platforms` whose owner is gone; each goes to one claimant.
        A Redis failure skips that owner (logged), never what was claimed."""
        claimed: list[Message] = []
        try:
            owners = {_text(o) for o in await self.redis.smembers(self.keys.journal_owners())}
        except FAILURES as exc:
            log.warning("journal unreadable: %s", type(exc).__name__)
            owners = set()
        for owner in owners - {self.owner}:
            try:
                if await self.redis.exists(self.keys.owner(owner)):
                    continue  # a live process is answering its entries
                journal = self.keys.journal(owner)
                await self._claim_in(journal, platforms, claimed)
                if not await self.redis.exists(journal):
                    await self.redis.srem(self.keys.journal_owners(), owner)
            except FAILURES as exc:
                log.warning("journal of a dead process not read: %s", type(exc).__name__)
        try:
            await self._claim_in(self.keys.legacy_journal(), platforms, claimed)
        except FAILURES as exc:
            log.warning("journal of release 0.1 not read: %s", type(exc).__name__)
        return claimed

    async def _claim_in(
        self, journal: str, platforms: Collection[str], claimed: list[Message]
    ) -> None:
        """Claim the dead owners' entries of one journal hash (a dead process's, or release
        0.1's single one, where several owners' entries lie side by side)."""
        alive: dict[str, bool] = {}
        for raw_entry, raw_value in (await self.redis.hgetall(journal)).items():
            try:
                owner = json.loads(raw_value)["owner"]
            except (ValueError, KeyError, TypeError):
                await self.redis.hdel(journal, raw_entry)
                continue
            if owner == self.owner or _platform(raw_entry) not in platforms:
                continue
            if owner not in alive:
                alive[owner] = bool(await self.redis.exists(self.keys.owner(owner)))
            if alive[owner] or not await self.claim(journal, raw_entry):
                continue  # a live process answers it, or another replica claimed it first
            message = _message(raw_value)
            if message is not None:
                claimed.append(message)


def _message(raw_value: str | bytes) -> Message | None:
    """The journaled message, to be answered anew: not a redelivery (its delivery id and
    place in the platform's order were the crashed process's; the dedupe would drop it)."""
    try:
        message = message_from_json(json.loads(raw_value)["message"])
    except (ValueError, KeyError, TypeError):
        return None
    return replace(message, delivery_id="", order="") if message is not None else None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _platform(entry: str | bytes) -> str:
    return _text(entry).split(":", 1)[0]
