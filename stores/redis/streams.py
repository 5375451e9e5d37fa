"""The hop between an ingress and its workers: messages in Redis Streams, by conversation.

The ingress appends each message to one of `workers.partitions` streams, chosen by a stable
hash of its conversation, so one conversation's messages stay in one stream in the order
they arrived. Each partition is read by one worker at a time: the worker holds the
partition's lease (a key with its id and a TTL it renews) and reads through a consumer group,
so an entry it read and did not acknowledge stays pending under its name. When a worker dies
its leases run out; the next owner takes the pending entries over (`XAUTOCLAIM`) before it
reads new ones, and asks the store how far the dead worker got with each (`retake`).

Entries are acknowledged once their turn is recorded and trimmed behind the oldest one still
held (`XTRIM MINID`), so a stream holds what waits and what is being answered, no more.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from core.codec import message_from_json, message_to_json
from core.model import Message
from stores.redis.keys import KeyBuilder
from stores.redis.scripts import APPEND, RELEASE, TAKE

log = logging.getLogger(__name__)

GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id and the message (None: unreadable, acknowledged unread)."""

    id: str
    message: Message | None


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the workers are behind on one partition."""

    length: int  # entries in the stream (waiting, held, and not yet trimmed)
    waiting: int  # appended and not read by any worker yet
    pending: int  # read and not acknowledged
    oldest_age: float  # seconds since the oldest entry not acknowledged was appended (0: none)
    consumers: dict[str, int]  # pending entries per worker


def entry_order(entry_id: str) -> str:
    """An entry id as text that sorts in stream order (`ms-seq`, zero-padded)."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):06d}"


def entry_time(entry_id: str) -> float:
    """When the entry was appended (its id's milliseconds), in seconds since the epoch."""
    return int(entry_id.partition("-")[0]) / 1000


def next_id(entry_id: str) -> str:
    """The smallest id after `entry_id` (what `XTRIM MINID` keeps from)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class RedisStreams:
    """The partitions on one Redis (standalone, Sentinel or Cluster: every command touches
    one partition's slot, or the workers' registry alone)."""

    def __init__(self, redis: Any, keys: KeyBuilder, *, partitions: int, dedupe_ttl: int):
        self.redis = redis
        self.keys = keys
        self.partitions = partitions
        self.dedupe_ttl = dedupe_ttl

    def partition(self, conversation_id: str) -> int:
        """The conversation's partition: the same in every process (CRC-32, not `hash()`)."""
        return zlib.crc32(conversation_id.encode()) % self.partitions

    # --- the ingress ---------------------------------------------------------------------

    async def append(self, partition: int, message: Message, token: str) -> str | None:
        """Append `message`; its entry id, or None when its delivery was appended before (a
        retry, another ingress on the same token). `token`: the same for every attempt at
        one message, so an attempt whose reply was lost is not appended twice. Raises what
        Redis raises."""
        if message.delivery_id:
            namespace, delivery, ttl = message.platform, message.delivery_id, self.dedupe_ttl
        else:  # nothing to dedupe: the key only makes a resent append return the same entry
            namespace, delivery, ttl = "append", token, 600
        seen = self.keys.stream_seen(partition, namespace, delivery)
        entry = await self.redis.eval(
            APPEND, 2, self.keys.stream(partition), seen, token, ttl, message_to_json(message)
        )
        return _text(entry) if entry else None

    # --- the workers ---------------------------------------------------------------------

    async def register(self, worker: str, ttl: float) -> int:
        """Say `worker` lives for `ttl` seconds more; how many workers live."""
        now = int(time.time() * 1000)
        key = self.keys.workers()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {worker: now + int(ttl * 1000)})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            *_, live = await pipe.execute()
        return int(live)

    async def unregister(self, worker: str) -> None:
        await self.redis.zrem(self.keys.workers(), worker)

    async def take_lease(self, partition: int, worker: str, ttl: float) -> bool:
        """Take the partition's lease, or renew it if `worker` holds it; False: another does."""
        key = self.keys.stream_lease(partition)
        return bool(await self.redis.eval(TAKE, 1, key, worker, int(ttl * 1000)))

    async def renew(self, partitions: Sequence[int], worker: str, ttl: float) -> set[int]:
        """Renew every lease `worker` holds in one pipeline; the partitions it lost."""
        if not partitions:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for number in partitions:
                pipe.eval(TAKE, 1, self.keys.stream_lease(number), worker, int(ttl * 1000))
            renewed = await pipe.execute()
        return {number for number, ok in zip(partitions, renewed, strict=True) if not ok}

    async def drop_lease(self, partition: int, worker: str) -> None:
        """Give the lease up, if `worker` still holds it."""
        await self.redis.eval(RELEASE, 1, self.keys.stream_lease(partition), worker)

    async def holders(self) -> dict[int, str]:
        """Which worker holds each partition's lease (free ones left out)."""
        keys = [self.keys.stream_lease(p) for p in range(self.partitions)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            held = await pipe.execute()
        return {p: _text(h) for p, h in enumerate(held) if h}

    async def join(self, partition: int) -> None:
        """Create the partition's stream and consumer group if they are not there yet."""
        try:
            await self.redis.xgroup_create(self.keys.stream(partition), GROUP, id="0",
                                           mkstream=True)  # fmt: skip
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take_over(self, partition: int, worker: str, count: int) -> list[Entry]:
        """Every entry read and not acknowledged (by a worker that died or gave the
        partition up, or by this one before), now pending under `worker`, oldest first."""
        stream, start, taken = self.keys.stream(partition), "0-0", []
        while True:
            reply = await self.redis.xautoclaim(stream, GROUP, worker, 0, start, count=count)
            start, entries = _text(reply[0]), reply[1]
            taken += [_entry(entry) for entry in entries if entry and entry[1] is not None]
            if start == "0-0":
                await self._forget_consumers(stream, worker)
                return taken

    async def _forget_consumers(self, stream: str, worker: str) -> None:
        """Remove the group's consumers that hold nothing (workers gone, their entries just
        taken over), so the group does not list every worker that ever ran."""
        for consumer in await self.redis.xinfo_consumers(stream, GROUP):
            name = _text(consumer["name"])
            if name == worker or consumer["pending"]:
                continue
            if await self.redis.zscore(self.keys.workers(), name) is None:  # not a live one
                await self.redis.xgroup_delconsumer(stream, GROUP, name)

    async def read(self, partition: int, worker: str, count: int, block: float) -> list[Entry]:
        """New entries (waiting up to `block` seconds for the first)."""
        stream = self.keys.stream(partition)
        reply = await self.redis.xreadgroup(GROUP, worker, {stream: ">"}, count=count,
                                            block=int(block * 1000))  # fmt: skip
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [_entry(entry) for entry in entries]

    async def held_by(self, partition: int, worker: str) -> int:
        """How many entries are pending under `worker` (read by it, not acknowledged)."""
        summary = await self.redis.xpending(self.keys.stream(partition), GROUP)
        for consumer in summary.get("consumers") or ():
            if _text(consumer["name"]) == worker:
                return int(consumer["pending"])
        return 0

    async def ack(self, partition: int, ids: Sequence[str], keep_from: str) -> None:
        """Acknowledge `ids`, and trim what is before `keep_from` (the oldest entry still
        held, or just after the last one read)."""
        stream = self.keys.stream(partition)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, GROUP, *ids)
            pipe.xtrim(stream, minid=keep_from, approximate=True)
            await pipe.execute()

    async def lag(self, partition: int) -> Lag:
        """The partition's length, entries waiting and pending, and the oldest one's age."""
        stream = self.keys.stream(partition)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, GROUP)
            results = await pipe.execute(raise_on_error=False)
        length = results[0] if isinstance(results[0], int) else 0
        groups = results[1] if isinstance(results[1], list) else []
        group = next((g for g in groups if _text(g.get("name", b"")) == GROUP), None)
        pending_info = results[2] if isinstance(results[2], dict) else {}
        pending = int(pending_info.get("pending") or 0)
        last = _text(group.get("last-delivered-id", b"0-0")) if group else "0-0"
        lag = group.get("lag") if group else None
        waiting = int(lag) if isinstance(lag, int) else await self._after(stream, last)
        oldest = pending_info.get("min") if pending else None
        if oldest is None and waiting:
            oldest = await self._first_after(stream, last)
        age = max(0.0, time.time() - entry_time(_text(oldest))) if oldest else 0.0
        consumers = {
            _text(c["name"]): int(c["pending"]) for c in pending_info.get("consumers") or ()
        }
        return Lag(length, waiting, pending, age, consumers)

    async def _after(self, stream: str, last: str) -> int:
        """Entries after `last` (Redis 6.2 has no group `lag`)."""
        return len(await self.redis.xrange(stream, min=f"({last}", count=10_000))

    async def _first_after(self, stream: str, last: str) -> str | None:
        found = await self.redis.xrange(stream, min=f"({last}", count=1)
        return _text(found[0][0]) if found else None


def _entry(raw: Any) -> Entry:
    entry_id, fields = _text(raw[0]), raw[1] or {}
    payload = fields.get(b"m", fields.get("m"))
    return Entry(entry_id, message_from_json(payload) if payload is not None else None)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
