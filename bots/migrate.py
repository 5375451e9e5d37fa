"""`chatbot migrate`: moves what release 0.1 kept in Redis to the key layout of 0.2.

What moves: a user's usage counters, from `{prefix}:usage:<platform>:<user>:<period>` to
`{prefix}:usage:{<platform>:<user>}:<period>` (the user's hash tag, for Redis Cluster). The
old rate-limit buckets `{prefix}:rate:<platform>:<user>` are dropped: they live a minute, and a
fresh bucket is full. Nothing else is touched (conversations keep their keys; the old journal
hash `{prefix}:journal` stays where recovery reads it).

Each old usage hash is moved in three steps, each a single-key command, so it works on Redis
Cluster (the old and the new key are on different slots):

1. read it (`READ`: PTTL and HGETALL at once);
2. add its counters into the new hash (`ADD`: HINCRBY, so what a 0.2 process already wrote
   there is kept and summed), with a marker field `migrated:<old key>` holding the counts
   added; the new hash keeps the longer of the two TTLs;
3. delete it, only if it still holds what was read (`DELETE`), then mark the move done.

A rerun after a crash between 2 and 3 finds the marker and adds nothing twice; a 0.1 process
still writing the old hash meanwhile makes step 3 refuse, and the next attempt adds only what
was written since; an old hash 0.1 made again after the move (same user, same day) is added
whole. So the command is idempotent and can be run again at any time.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from stores.redis.keys import KeyBuilder

MARKER = "migrated:"  # + the old key's name: a field of the new usage hash
EXAMPLES = 20
SCAN_COUNT = 500
ATTEMPTS = 5  # reads of one old hash that 0.1 keeps writing before it is left for a rerun
CONCURRENCY = 16  # old hashes moved at once

_PERIOD = re.compile(r"d\d{4}-\d{2}-\d{2}|m\d{4}-\d{2}")

# KEYS[1]: an old usage hash. Returns false when it is gone, else {PTTL, HGETALL}.
READ = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return false end
return {ttl, redis.call('HGETALL', KEYS[1])}
"""

# KEYS[1]: the new usage hash. ARGV[1]: the marker field; ARGV[2]: the old hash's PTTL (-1: no
# TTL); ARGV[3]: its counts as JSON (sorted, compact). The marker holds "moving <counts>" until
# the old hash is deleted, then "moved <counts>". Returns 1 when counts were added, 0 when
# these counts had been added already.
ADD = """
local counts = cjson.decode(ARGV[3])
local marker = redis.call('HGET', KEYS[1], ARGV[1])
local before = {}
if marker then
  local state, json = string.match(marker, '^(%a+) (.*)$')
  if json == ARGV[3] then return 0 end
  if state == 'moving' then
    -- the same old hash, written by 0.1 since it was read: add what it gained, unless it
    -- shrank (deleted by the move after all, then made again: add it whole)
    local previous = cjson.decode(json)
    local grown = true
    for name, value in pairs(previous) do
      if (counts[name] or 0) < value then grown = false end
    end
    if grown then before = previous end
  end
end
for name, value in pairs(counts) do
  local gained = value - (before[name] or 0)
  if gained ~= 0 then redis.call('HINCRBY', KEYS[1], name, gained) end
end
redis.call('HSET', KEYS[1], ARGV[1], 'moving ' .. ARGV[3])
local old = tonumber(ARGV[2])
local new = redis.call('PTTL', KEYS[1])
if old > 0 and (new < 0 or old > new) then redis.call('PEXPIRE', KEYS[1], old) end
return 1
"""

# KEYS[1]: an old usage hash. ARGV: its fields and values as read, in pairs. Deletes it if it
# still holds exactly those: 1; -1 when it is gone already; 0 when it changed (not deleted).
DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HLEN', KEYS[1]) * 2 ~= #ARGV then return 0 end
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1]: the new usage hash. ARGV[1]: the marker field; ARGV[2]: the counts deleted with
# the old hash. From now on an old hash of that name is a new one, made by 0.1 after the move.
DONE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == 'moving ' .. ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], 'moved ' .. ARGV[2])
end
return 1
"""

Client = Redis | RedisCluster
# Called after an old hash's counts were added and before it is deleted: (old key, new key).
# Tests pass one that raises, to stop the migration where a crash would.
AfterAdd = Callable[[str, str], Awaitable[None]]


@dataclass
class MigrationReport:
    """What a migration moved (or, in a dry run, would move)."""

    applied: bool
    moved: int = 0  # old usage hashes whose counts were (would be) added to the new ones
    already_moved: int = 0  # old usage hashes whose counts were added by an earlier run
    buckets_dropped: int = 0  # old rate-limit buckets deleted (would be)
    skipped: int = 0  # keys of the old shape that are not what 0.1 wrote: left alone
    examples: list[str] = field(default_factory=list)

    @property
    def usage_keys(self) -> int:
        """The old usage hashes found (moved now, or finished now)."""
        return self.moved + self.already_moved

    def note(self, line: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(line)

    def __str__(self) -> str:
        if self.applied:
            lines = [
                f"usage keys moved: {self.moved}",
                f"usage keys added by an earlier run, old key deleted now: {self.already_moved}",
                f"rate-limit buckets dropped: {self.buckets_dropped}",
            ]
        else:
            lines = [
                f"usage keys to move: {self.moved}",
                f"usage keys added by an earlier run, old key to delete: {self.already_moved}",
                f"rate-limit buckets to drop: {self.buckets_dropped}",
            ]
        if self.skipped:
            lines.append(f"left alone (not a 0.1 usage hash, or still being written): "
                         f"{self.skipped}")  # fmt: skip
        if self.examples:
            shown = len(self.examples)
            found = self.usage_keys + self.buckets_dropped + self.skipped
            more = f" ({shown} of {found})" if found > shown else ""
            lines.append(f"for example{more}:")
            lines.extend(f"  {line}" for line in self.examples)
        return "\n".join(lines)


async def migrate(
    redis: Client,
    keys: KeyBuilder,
    *,
    apply: bool,
    after_add: AfterAdd | None = None,
) -> MigrationReport:
    """Moves the 0.1 usage hashes under `keys.prefix` and drops the 0.1 rate-limit buckets;
    with `apply=False` (a dry run) only reads. On a RedisCluster client the scans cover every
    primary. Redis errors propagate; a rerun resumes without counting anything twice."""
    report = MigrationReport(applied=apply)
    mover = _Mover(redis, keys, apply, after_add, report)
    await mover.each(f"{keys.prefix}:usage:", mover.usage)
    await mover.each(f"{keys.prefix}:rate:", mover.bucket)
    return report


class _Mover:
    def __init__(
        self,
        redis: Client,
        keys: KeyBuilder,
        apply: bool,
        after_add: AfterAdd | None,
        report: MigrationReport,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.apply = apply
        self.after_add = after_add
        self.report = report

    async def each(self, head: str, move: Callable[[str, str], Awaitable[None]]) -> None:
        """`move(key, rest)` for each key named `head` + `rest` where `rest` is 0.1's
        (without a hash tag), CONCURRENCY at a time."""
        batch: list[str] = []
        async for raw in self.redis.scan_iter(match=_glob(head) + "*", count=SCAN_COUNT):
            key = _text(raw)
            if key is None:
                self.report.skipped += 1
                continue
            if key.startswith(head) and not key[len(head) :].startswith("{"):
                batch.append(key)
            if len(batch) >= CONCURRENCY:
                await self._run(batch, head, move)
                batch = []
        await self._run(batch, head, move)

    @staticmethod
    async def _run(
        batch: list[str], head: str, move: Callable[[str, str], Awaitable[None]]
    ) -> None:
        # every move of the batch ends before an error propagates: none runs on unseen
        results = await asyncio.gather(
            *(move(key, key[len(head) :]) for key in batch), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def new_key(self, old: str, rest: str) -> str | None:
        """The 0.2 name of the 0.1 usage hash `old`, None when 0.1 would not have named it so."""
        parts = rest.split(":")
        if len(parts) != 3 or not _PERIOD.fullmatch(parts[2]):
            return None
        platform, user, period = unquote(parts[0]), unquote(parts[1]), parts[2]
        if self.keys.legacy_user_usage(platform, user, period) != old:
            return None  # not escaped the way 0.1 escaped
        return self.keys.user_usage(platform, user, period)

    async def usage(self, old: str, rest: str) -> None:
        new = self.new_key(old, rest)
        if new is None:
            self._skip(old, "not a 0.1 usage key name")
            return
        marker = MARKER + old
        for _ in range(ATTEMPTS):
            try:
                read = await self.redis.eval(READ, 1, old)
            except ResponseError:  # WRONGTYPE: not a hash
                self._skip(old, "not a hash")
                return
            if read is None:
                return  # gone meanwhile (expired, or moved by another run)
            pttl, flat = int(read[0]), _texts(read[1])
            counts = _counts(flat) if flat is not None else None
            if flat is None or counts is None:
                self._skip(old, "not all counters are integers")
                return
            snapshot = json.dumps(counts, sort_keys=True, separators=(",", ":"))
            if not self.apply:
                previous = await self.redis.hget(new, marker)
                self._count(old, new, _text(previous) in (f"moving {snapshot}",
                                                          f"moved {snapshot}"))  # fmt: skip
                return
            added = await self.redis.eval(ADD, 1, new, marker, pttl, snapshot)
            if self.after_add is not None:
                await self.after_add(old, new)
            deleted = await self.redis.eval(DELETE, 1, old, *flat)
            if int(deleted) != 0:
                await self.redis.eval(DONE, 1, new, marker, snapshot)
                self._count(old, new, already=int(added) == 0)
                return
            # 0.1 wrote the old hash since it was read: read it again, add what it gained
        self._skip(old, "still being written (is 0.1 running?); run migrate again")

    async def bucket(self, old: str, rest: str) -> None:
        if len(rest.split(":")) != 2:
            self._skip(old, "not a 0.1 rate-limit bucket name")
            return
        if self.apply and not await self.redis.delete(old):
            return  # expired meanwhile
        self.report.buckets_dropped += 1
        self.report.note(f"{old} (rate-limit bucket, dropped)")

    def _count(self, old: str, new: str, already: bool) -> None:
        if already:
            self.report.already_moved += 1
            self.report.note(f"{old} -> {new} (added by an earlier run; old key deleted)")
        else:
            self.report.moved += 1
            self.report.note(f"{old} -> {new}")

    def _skip(self, key: str, why: str) -> None:
        self.report.skipped += 1
        self.report.note(f"{key} (left alone: {why})")


def _glob(text: str) -> str:
    """`text` matched literally in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _texts(values: list[Any]) -> list[str] | None:
    """A reply's items as text; None when one is not UTF-8."""
    texts = [_text(value) for value in values]
    return [text for text in texts if text is not None] if None not in texts else None


def _counts(flat: list[str]) -> dict[str, int] | None:
    """HGETALL's flat reply as counters; None when a field is not an integer."""
    counts: dict[str, int] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        if not re.fullmatch(r"-?\d{1,15}", value):
            return None
        counts[name] = int(value)
    return counts
