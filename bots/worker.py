"""`chatbot run --role worker`: answers what the ingress appended, partition by partition.

A worker holds the leases of its share of the partitions (`ceil(partitions / live workers)`,
renewed every third of `workers.claim_idle`) and reads each through the consumer group. It
hands entries to the core in stream order, so one conversation's turns run one at a time in
the order they arrived (the core's intake lines them up; other conversations run meanwhile),
and answers through each platform's HTTP API (`Sends.responder_for`). An entry is
acknowledged after its turn: a chat turn's claim leaves the conversation's pending set in
the turn's own write, so "recorded" and "claimed" change together.

When a worker dies its leases run out after `claim_idle`; the next owner takes its
unacknowledged entries over (`XAUTOCLAIM`) before reading new ones and asks the store for
each (`retake`): recorded (acknowledged, not answered again), claimed and not recorded
(answered anew after a short note), or never claimed (answered). A worker that gives a
partition up (another worker joined) stops reading it, lets its turns finish, then drops the
lease, so the next owner never answers a conversation's later message before an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace

from adapters.base import Sends
from core.config import Settings
from core.model import ContextKey, Message
from core.protocols import Handler, Responder
from core.storage import Retakes, RetakeState
from core.streaming.reply import reply
from stores.redis.health import FAILURES
from stores.redis.streams import Entry, RedisStreams, entry_order, next_id

log = logging.getLogger(__name__)

ConversationOf = Callable[[Message], ContextKey]  # the core's `conversation_key`

SETTLE = 1.0  # seconds a starting worker gives others starting with it to register
BUSY_POLL = 0.05  # seconds before asking again about a message another worker holds
BUSY_POLL_MAX = 1.0
LEASE_VALID = 2 / 3  # of `claim_idle` after a renewal: past it, read nothing until the next

RESTART_NOTE = "(I was restarted while answering your message; here is the answer.)"
BLOCK = 1.0  # seconds a read waits for new entries (under the Redis socket timeout)
RETRY = 1.0  # seconds before a partition is read again after Redis failed


class Partition:
    """One leased partition: its reader and the entries it holds (read, not acknowledged)."""

    def __init__(self, worker: Worker, number: int) -> None:
        self.worker = worker
        self.number = number
        self.held: dict[str, asyncio.Task[None]] = {}
        self.last_read = "0-0"
        self.reader: asyncio.Task[None] | None = None
        self.done = asyncio.Event()  # nothing held
        self.done.set()
        # Trimming behind what this worker read is safe while it holds the lease; one that
        # lost it leaves the stream to the new owner (it may be reading older entries).
        self.trims = True
        self.dispatching: str | None = None  # the entry being handed over, not yet held
        self.stopping = False

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read(), name=f"worker:p{self.number}")

    async def stop_reading(self) -> None:
        """Cancel the reader. redis-py can turn a cancel that lands in a blocking read into a
        connection error, which the loop would take for Redis being away: a flag ends it."""
        reader, self.reader = self.reader, None
        if reader is not None:
            self.stopping = True
            reader.cancel()
            await asyncio.wait({reader}, timeout=RETRY + self.worker.block + 1)
            if not reader.done():
                log.warning("partition %d: its reader did not stop", self.number)

    async def _read(self) -> None:
        worker, streams, number = self.worker, self.worker.streams, self.number
        taken_over = False
        while not self.stopping:
            try:
                if not taken_over:
                    await worker.leased()
                    await streams.join(number)
                    noted: set[ContextKey] = set()  # conversations told of the restart
                    for entry in await streams.take_over(number, worker.id, worker.read_count):
                        if entry.id not in self.held:
                            await self._dispatch(entry, retaken=noted)
                    taken_over = True
                room = await worker.room()
                await worker.leased()
                entries = await streams.read(number, worker.id, room, worker.block)
                if await streams.held_by(number, worker.id) > len(self.held) + len(entries):
                    # A read whose reply came late was sent again by redis-py: what the first
                    # one delivered is pending under this worker, unseen. Everything pending
                    # is taken up again, in stream order, before anything newer.
                    log.warning("partition %d: a read's entries went missing; taking them up",
                                number)  # fmt: skip
                    taken_over = False
                    continue
                for entry in entries:
                    if not worker.lease_valid():  # the rest stays pending under this worker:
                        taken_over = False  # taken over again once the lease is renewed
                        break
                    await self._dispatch(entry)
            except FAILURES as exc:
                if self.stopping:
                    return
                log.warning("partition %d not read (%s); again in %.0fs", number,
                            type(exc).__name__, RETRY)  # fmt: skip
                taken_over = False  # what was read before the failure is pending under us
                await asyncio.sleep(RETRY)

    async def _dispatch(self, entry: Entry, *, retaken: set[ContextKey] | None = None) -> None:
        """Hand one entry to the core (in stream order), or acknowledge it unanswered.
        `retaken`: taken over from another worker; the conversations already told so. An
        entry that breaks this (a bug) is logged and acknowledged: it would break it again."""
        self.dispatching = entry.id  # not trimmed while it is handed over
        try:
            await self._hand_over(entry, retaken)
        except FAILURES:
            raise  # Redis away: the reader takes it up again
        except Exception:
            log.exception("stream entry %s could not be handed to the core", entry.id)
            await self._ack(entry.id)
        finally:
            self.dispatching = None
        if entry_order(entry.id) > entry_order(self.last_read):
            self.last_read = entry.id

    async def _hand_over(self, entry: Entry, retaken: set[ContextKey] | None) -> None:
        worker, message = self.worker, entry.message
        sender = worker.senders.get(message.platform) if message is not None else None
        if message is None or sender is None:
            why = "unreadable" if message is None else f"no {message.platform} here"
            log.warning("stream entry %s skipped: %s", entry.id, why)
            await self._ack(entry.id)
            return
        line = worker.conversation(message)
        delivery, order = f"p{self.number}-{entry.id}", entry_order(entry.id)
        message = replace(message, delivery_id=delivery, order=order)
        responder = sender.responder_for(message)
        if retaken is not None:
            worker.retaken += 1
            state = await self._retake(line, message.platform, delivery, order)
            if state == "done":  # its turn was recorded; only the acknowledgement was lost
                await self._ack(entry.id)
                return
            if state == "again" and line not in retaken:
                # Only a conversation's oldest unfinished message can have been under way
                # (its turns run one at a time); the later ones were waiting in line.
                retaken.add(line)
                log.warning("answering anew a message a stopped worker left unanswered")
                try:  # before the turn takes its place: the next entries wait behind it
                    await reply(responder, RESTART_NOTE)
                except Exception as exc:
                    log.warning("restart note not delivered: %s", type(exc).__name__)
        self.done.clear()
        task = asyncio.create_task(self._answer(entry.id, message, responder),
                                   name=f"worker:{entry.id}")  # fmt: skip
        self.held[entry.id] = task
        worker.holding += 1

    async def _retake(
        self, line: ContextKey, platform: str, delivery: str, order: str
    ) -> RetakeState:
        """How far the entry's earlier reader got. One that lives (it lost the partition to a
        stall, and may be answering the entry now) is waited for, as the core waits for
        another process's earlier message; the later entries of the partition wait behind."""
        deliveries, deadline = self.worker.deliveries, time.monotonic() + self.worker.max_wait
        pause = BUSY_POLL
        while (state := await deliveries.retake(line, platform, delivery, order)) == "busy":
            if time.monotonic() >= deadline:
                log.warning("a worker that lives still holds a message after %.0fs; answering "
                            "it here", self.worker.max_wait)  # fmt: skip
                return await deliveries.retake(line, platform, delivery, order, force=True)
            await asyncio.sleep(pause)  # held in another process: nothing here to wait on
            pause = min(pause * 2, BUSY_POLL_MAX)
        return state

    async def _answer(self, entry_id: str, message: Message, responder: Responder) -> None:
        try:
            await self.worker.handler(message, responder)
        except asyncio.CancelledError:
            self._release(entry_id)
            raise  # not acknowledged: the next owner retakes it
        except Exception:
            log.exception("a turn failed outside the core's guards")
        self.worker.turns += 1
        try:  # held until acknowledged: a read's check counts it as this worker's
            await self._ack(entry_id)
        finally:
            self._release(entry_id)

    def _release(self, entry_id: str) -> None:
        if self.held.pop(entry_id, None) is not None:
            self.worker.holding -= 1
            self.worker.freed()
        if not self.held:
            self.done.set()

    async def _ack(self, entry_id: str) -> None:
        """Acknowledge, and trim the stream behind the oldest entry still held."""
        held = [e for e in self.held if e != entry_id]
        if self.dispatching:
            held.append(self.dispatching)
        oldest = min(held, key=entry_order, default=None)
        keep_from = oldest if oldest is not None else next_id(self.last_read)
        if not self.trims or not self.worker.lease_valid():
            keep_from = "0-0"
        try:
            await self.worker.streams.ack(self.number, [entry_id], keep_from)
        except FAILURES as exc:  # taken over later; `retake` then says it is done
            log.warning("entry %s not acknowledged: %s", entry_id, type(exc).__name__)


class Worker:
    """The worker role: leases, readers, and the core's handler for each entry."""

    def __init__(
        self,
        settings: Settings,
        streams: RedisStreams,
        deliveries: Retakes,
        handler: Handler,
        conversation: ConversationOf,
        senders: Mapping[str, Sends],
        *,
        worker_id: str = "",
    ) -> None:
        self.settings = settings.workers
        self.streams = streams
        self.deliveries = deliveries
        self.handler = handler
        self.conversation = conversation
        self.senders = dict(senders)
        self.id = worker_id or secrets.token_hex(8)
        self.read_count = self.settings.read_count
        self.owned: dict[int, Partition] = {}
        self.releasing: set[int] = set()
        self.live = 0  # workers registered, this one included
        self.holding = 0  # entries read and not acknowledged, all partitions
        self.turns = 0  # entries answered
        self.retaken = 0  # entries taken over from another worker (or an earlier run)
        self._room = asyncio.Event()
        self._room.set()
        self.max_wait = settings.redis.lock_wait  # for a live worker's message, as the core
        # The leases are safe to read under until then (monotonic): a renewal that comes late
        # (a starved loop) pauses the readers instead of letting two workers read a partition.
        self.valid_until = 0.0
        self._renewed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leases: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._registered = False
        self._stopping = False  # reading stopped: leases renewed, nothing taken
        self._closing = False
        # A read waits at most this long for new entries: under the Redis socket timeout, or
        # every idle read would time out (and be sent again).
        self.block = min(BLOCK, settings.redis.socket_timeout / 2)

    async def start(self) -> None:
        """Register, and take a share of the partitions once the workers starting at the
        same moment (a deployment, a restart after an outage) have registered too: the
        first one would otherwise take every partition and read the whole backlog alone."""
        self.live = max(1, await self.streams.register(self.id, self.settings.claim_idle))
        self._registered = True
        if len(await self.streams.holders()) < self.streams.partitions:
            await asyncio.sleep(min(SETTLE, self.settings.claim_idle / 3))  # others register
        await self._tick()
        self._leases = asyncio.create_task(self._keep_leases(), name="worker:leases")

    def ready(self) -> bool:
        return (
            self._registered
            and self._leases is not None
            and not self._leases.done()
            and all(p.reader is not None and not p.reader.done() for p in self.owned.values()
                    if p.number not in self.releasing)
        )  # fmt: skip

    async def room(self) -> int:
        """How many more entries this worker may read now (waiting until it may read one)."""
        limit = self.settings.max_entries
        while self.holding >= limit:
            self._room.clear()
            await self._room.wait()
        return min(self.read_count, limit - self.holding)

    def lease_valid(self) -> bool:
        return time.monotonic() < self.valid_until

    async def leased(self) -> None:
        """Until the leases are known to hold (at once, unless a renewal is late)."""
        while not self.lease_valid():
            await asyncio.shield(self._renewed)

    def freed(self) -> None:
        if self.holding < self.settings.max_entries:
            self._room.set()

    async def _keep_leases(self) -> None:
        while not self._closing:  # a flag too: a cancel inside Redis can become an error
            await asyncio.sleep(self.settings.claim_idle / 3)
            try:
                await self._tick()
            except Exception:  # a bug: logged; the leases must go on being renewed
                log.exception("worker lease tick failed")

    async def _tick(self) -> None:
        """Register, renew the leases held, and take or give up partitions toward the fair
        share. A Redis failure skips the tick (logged); leases then run out on their own."""
        ttl, total = self.settings.claim_idle, self.streams.partitions
        try:
            started = time.monotonic()
            renewing = list(self.owned)
            lost = await self.streams.renew(renewing, self.id, ttl)
            for number in renewing:  # given up while the renewal ran: taken again, so dropped
                if number not in self.owned and number not in lost:
                    await self.streams.drop_lease(number, self.id)
            self.valid_until = started + ttl * LEASE_VALID
            renewed, self._renewed = self._renewed, asyncio.get_running_loop().create_future()
            renewed.set_result(None)
            for number in lost:
                if number in self.owned:
                    log.warning("lost the lease of partition %d; another worker reads it",
                                number)  # fmt: skip
                    await self._lose(number)
            if self._stopping:  # draining: keep what is held until `close`, take nothing
                return
            self.live = max(1, await self.streams.register(self.id, ttl))
            self._registered = True
            share = math.ceil(total / self.live)
            reading = [n for n in self.owned if n not in self.releasing]
            if len(reading) > share:
                for number in sorted(reading, reverse=True)[: len(reading) - share]:
                    self._give_up(number)
            elif len(reading) < share:
                await self._take(share - len(reading))
        except FAILURES as exc:
            log.warning("worker leases not renewed: %s", type(exc).__name__)

    async def _take(self, wanted: int) -> None:
        held = await self.streams.holders()
        total = self.streams.partitions
        start = zlib.crc32(self.id.encode()) % total  # workers start looking at other places
        for step in range(total):
            number = (start + step) % total
            if wanted <= 0:
                return
            if number in held or number in self.owned:
                continue
            # taken after this tick's renewal began: valid at least as long as the others
            if await self.streams.take_lease(number, self.id, self.settings.claim_idle):
                partition = self.owned[number] = Partition(self, number)
                partition.start()
                wanted -= 1
                log.info("reading partition %d", number)

    def _give_up(self, number: int) -> None:
        """Stop reading; drop the lease once its turns are done (another worker joined)."""
        self.releasing.add(number)
        task = asyncio.create_task(self._release(number), name=f"worker:release:p{number}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, number: int) -> None:
        partition = self.owned[number]
        await partition.stop_reading()
        await partition.done.wait()
        self.owned.pop(number, None)
        self.releasing.discard(number)
        with contextlib.suppress(*FAILURES):
            await self.streams.drop_lease(number, self.id)
        log.info("gave partition %d up", number)

    async def _lose(self, number: int) -> None:
        partition = self.owned.pop(number, None)
        if partition is None:
            return
        partition.trims = False
        self.releasing.discard(number)
        await partition.stop_reading()

    async def stop_reading(self) -> None:
        """Shutdown, first step: read nothing more. The turns under way go on, and the
        leases are still renewed until `close`, so no other worker takes them meanwhile."""
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=RETRY + self.block + 1)
        for partition in list(self.owned.values()):
            await partition.stop_reading()

    async def close(self) -> None:
        """Shutdown, last step (the turns drained or cancelled): leases and registration go,
        so the partitions pass to the other workers at once, not after `claim_idle`."""
        self._stopping = self._closing = True
        leases, self._leases = self._leases, None
        if leases is not None:
            leases.cancel()
            await asyncio.wait({leases}, timeout=self.settings.claim_idle)
        for partition in list(self.owned.values()):
            await partition.stop_reading()
        with contextlib.suppress(*FAILURES):
            for number in list(self.owned):
                await self.streams.drop_lease(number, self.id)
            await self.streams.unregister(self.id)
        self.owned.clear()
