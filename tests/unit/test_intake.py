"""Intake with an in-memory `Deliveries` whose replies the test orders: the store runs the
claims in one order, their replies come back in another (two pooled connections)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from core.conversation.intake import Intake
from core.model import ContextKey, Message
from core.protocols import Responder
from core.storage import PlaceState
from tests.helpers import RecordingResponder, user_message


class GatedDeliveries:
    """A pending set per conversation. `claim` runs in the store once `runs[place]` is set
    and replies once `replies[place]` is set (both set unless the test clears them)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.pending_places: set[str] = set()
        self.runs: dict[str, asyncio.Event] = {}
        self.replies: dict[str, asyncio.Event] = {}
        self.ran: dict[str, asyncio.Event] = {}
        self.looked_at: dict[str, asyncio.Event] = {}

    def gate(self, place: str) -> None:
        for gates in (self.runs, self.replies, self.ran, self.looked_at):
            gates[place] = asyncio.Event()

    async def first_seen(self, namespace: str, delivery_id: str) -> bool:
        raise AssertionError("ordered messages are claimed")

    async def claim(
        self, line: ContextKey, namespace: str, delivery: str, place: str
    ) -> tuple[bool, str]:
        await self.runs[place].wait()
        if delivery in self.seen:
            return False, ""
        self.seen.add(delivery)
        self.pending_places.add(place)
        before = sorted(p for p in self.pending_places if p < place)
        self.ran[place].set()
        await self.replies[place].wait()
        return True, before[-1] if before else ""

    async def pending(self, line: ContextKey, place: str) -> PlaceState:
        self.looked_at[place].set()
        await asyncio.sleep(0)
        return "pending" if place in self.pending_places else "answered"

    async def leave(self, line: ContextKey, place: str) -> None:
        self.pending_places.discard(place)


def ordered(text: str, n: int) -> Message:
    return replace(user_message(text), delivery_id=f"d{n}", order=f"{n:020d}")


async def test_an_earlier_message_of_this_process_claimed_late_is_not_waited_for_in_the_store():
    """m2 reaches the intake first, m1 just after (two webhook requests). m1's claim runs in
    the store first, so m2's place ahead is m1; m1's reply comes back after m2's. m1 is
    behind m2 in this process's line: m2 waiting in the store for m1 waits for itself,
    until `max_wait` (the heartbeat, 15 s in production)."""
    deliveries = GatedDeliveries()
    handled: list[str] = []

    async def handler(message: Message, responder: Responder) -> None:
        handled.append(message.text)

    intake = Intake(
        handler, conversation=lambda m: m.key, deduper=deliveries, max_wait=5.0, owner="me"
    )
    m1, m2 = ordered("one", 1), ordered("two", 2)
    p1, p2 = f"{1:020d}:d1:me", f"{2:020d}:d2:me"
    for place in (p1, p2):
        deliveries.gate(place)
    second = asyncio.create_task(intake(m2, RecordingResponder()))  # m2 first in line
    first = asyncio.create_task(intake(m1, RecordingResponder()))
    deliveries.runs[p1].set()  # the store runs m1's claim first...
    await deliveries.ran[p1].wait()
    deliveries.runs[p2].set()  # ...then m2's, whose reply comes back first
    deliveries.replies[p2].set()
    await deliveries.ran[p2].wait()
    # m1's reply arrives once m2 has had its look at the store (or straight away after the fix)
    waiter = asyncio.create_task(deliveries.looked_at[p1].wait())
    await asyncio.wait({waiter, second}, return_when=asyncio.FIRST_COMPLETED)
    deliveries.replies[p1].set()
    async with asyncio.timeout(2):  # not `max_wait`
        await asyncio.gather(first, second)
    waiter.cancel()
    assert sorted(handled) == ["one", "two"]
    assert not deliveries.pending_places
