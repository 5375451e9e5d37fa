"""`python -m bench.redis_trip`: the CPU one Redis round trip costs the bot's client.

A pipeline of two commands (SET with a TTL, GET) from 50 concurrent tasks, through the bot's
own `make_client` and through redis-py's defaults, against the same Redis the benchmark uses.
The figure bounds what the core's three round trips per message can cost at the least.
"""

from __future__ import annotations

import asyncio
import sys
import time

from redis.asyncio import Redis

from bench.__main__ import redis_url
from bench.botproc import cpu_seconds
from bots.redis_conn import make_client

TASKS = 50
TRIPS = 20_000


async def _measure(client: Redis, label: str) -> str:
    async def worker(index: int) -> None:
        key = f"bench:redis_trip:{index}"
        for turn in range(TRIPS // TASKS):
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(key, turn, ex=60)
                pipe.get(key)
                await pipe.execute()

    try:
        await asyncio.gather(*(worker(i) for i in range(TASKS)))  # warm: connections open
        cpu0, started = cpu_seconds(), time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(TASKS)))
        cpu, seconds = cpu_seconds() - cpu0, time.monotonic() - started
        await client.delete(*(f"bench:redis_trip:{i}" for i in range(TASKS)))
    finally:
        await client.aclose()
    return f"{label}: {cpu / TRIPS * 1e6:.0f} µs of CPU per round trip, {TRIPS / seconds:.0f}/s"


async def main() -> None:
    url = redis_url()
    print(await _measure(make_client(url), "the bot's client (make_client)"))
    print(await _measure(Redis.from_url(url), "redis-py defaults"))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
