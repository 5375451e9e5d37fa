"""Counting Redis round trips: a connection class that records every network write."""

from __future__ import annotations

from typing import ClassVar

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from bots.redis_conn import make_client

HANDSHAKE = (b"HELLO", b"CLIENT", b"SELECT", b"AUTH", b"PING")


class RoundTrips:
    """A Redis connection class that records every network write."""

    def __init__(self, url: str) -> None:
        base = UnixDomainSocketConnection if url.startswith("unix") else Connection

        class Counting(base):  # type: ignore[misc, valid-type]
            writes: ClassVar[list[object]] = []  # joined only when counted: off the hot path

            async def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
                Counting.writes.append(command)
                return await super().send_packed_command(command, check_health)

        self.connection_class = Counting
        self.url = url

    def client(self) -> Redis:
        """The bot's own client (`make_client`), on the counting connection."""
        return make_client(self.url, connection_class=self.connection_class)

    def reset(self) -> None:
        self.connection_class.writes.clear()

    def count(self) -> tuple[int, int, int]:
        """(turn round trips with the lock riding in them, delivery dedupe round trips,
        round trips for the lock alone: a wait, an extension, a release), handshakes left out."""
        turn = dedupe = lock_only = 0
        for command in self.connection_class.writes:
            parts = [command] if isinstance(command, (bytes, str)) else list(command)  # type: ignore[call-overload]
            write = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
            if any(h in write[:40] for h in HANDSHAKE):
                continue
            if b"LRANGE" in write or b"MULTI" in write:
                turn += 1  # a turn's read or write (the lock and the journal ride in them)
            elif b":seen:" in write:
                dedupe += 1
            elif b":lock" in write:
                lock_only += 1
            # else: heartbeats, order checks, crash recovery's scan: not part of a turn
        return turn, dedupe, lock_only
