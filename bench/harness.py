"""Run the real bot end to end and measure it.

The bot runs with all three adapters (tests/drive.py) against the fake platform servers in
this process, and the fake OpenAI server in a thread of its own (so a blocking baseline
cannot stall it), with a real Redis reached through a connection that counts round trips.
"""

from __future__ import annotations

import asyncio
import bisect
import resource
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from core.tokens import TokenCounter
from tests.conftest import make_settings
from tests.drive import drive_settings_overrides, running_bot
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply

HANDSHAKE = (b"HELLO", b"CLIENT", b"SELECT", b"AUTH", b"PING")


class ThreadedOpenAI:
    """FakeOpenAI on its own event loop in a thread."""

    def __init__(self, default: Reply) -> None:
        self.default = default
        self.fake: FakeOpenAI | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with FakeOpenAI(default=self.default) as fake:
            self.fake = fake
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        self._ready.wait(10)
        assert self.fake is not None
        return self.fake

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class RoundTrips:
    """A Redis connection class that records every network write."""

    def __init__(self, url: str) -> None:
        base = UnixDomainSocketConnection if url.startswith("unix") else Connection

        class Counting(base):  # type: ignore[misc, valid-type]
            writes: ClassVar[list[bytes]] = []

            async def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
                parts = [command] if isinstance(command, (bytes, str)) else list(command)
                Counting.writes.append(
                    b"".join(p.encode() if isinstance(p, str) else p for p in parts)
                )
                return await super().send_packed_command(command, check_health)

        self.connection_class = Counting
        self.url = url

    def client(self) -> Redis:
        pool = BlockingConnectionPool.from_url(
            self.url, connection_class=self.connection_class, max_connections=512, timeout=10
        )
        return Redis(connection_pool=pool)

    def reset(self) -> None:
        self.connection_class.writes.clear()

    def count(self) -> tuple[int, int]:
        """(turn round trips, delivery dedupe round trips), locks and handshakes left out."""
        turn = dedupe = 0
        for write in self.connection_class.writes:
            if b":lock" in write or b":owner:" in write or any(h in write[:40] for h in HANDSHAKE):
                continue
            if b":journal" in write and b":conv:" not in write:
                continue  # crash recovery's periodic scan, not part of a turn
            if b":seen:" in write:
                dedupe += 1
            else:
                turn += 1
        return turn, dedupe


@dataclass
class Result:
    """One scenario's figures."""

    name: str
    messages: int = 0
    answered: int = 0
    seconds: float = 0.0
    to_llm_ms: list[float] = field(default_factory=list)
    token_to_screen_ms: list[float] = field(default_factory=list)
    first_text_ms: list[float] = field(default_factory=list)  # event -> first visible text
    platform_calls: int = 0
    redis_turn: int = 0
    redis_dedupe: int = 0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)
    budget: int = 0

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return (0.0, 0.0, 0.0)
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return statistics.median(ordered), at(0.95), at(0.99)


def _rusage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


async def run_bot_scenario(
    name: str,
    *,
    redis_url: str,
    platforms: Sequence[str],
    conversations: int,
    turns: int,
    reply: Reply,
    edit_interval: float = 1.0,
    concurrency: int = 1000,
    budget: int = 3000,
    key_prefix: str = "bench",
    tmp: Path,
) -> Result:
    """Drive `conversations` x `turns` messages through the bot; measure everything."""
    result = Result(name, budget=budget)
    counter = TokenCounter("estimate")
    trips = RoundTrips(redis_url)
    redis = trips.client()
    settings = make_settings(
        f"{key_prefix}-{int(time.time() * 1000)}", tmp,
        platforms=drive_settings_overrides(), streaming={"edit_interval": edit_interval},
        context={"token_budget": budget, "max_turns": 60, "tokenizer": "estimate"},
        llm={"chunk_timeout": 30, "max_retries": 2}, log_level="WARNING",
    )  # fmt: skip
    sent_at: dict[str, tuple[str, int, float]] = {}
    with ThreadedOpenAI(reply) as fake:
        async with running_bot(settings, redis, fake) as bot:
            before = {p: len(bot.drivers[p].calls()) for p in platforms}
            trips.reset()
            cpu0, _ = _rusage()
            started = time.monotonic()
            semaphore = asyncio.Semaphore(concurrency)

            async def conversation(index: int) -> None:
                platform = platforms[index % len(platforms)]
                driver = bot.drivers[platform]
                for turn in range(turns):
                    text = f"bench c{index} t{turn}"
                    async with semaphore:
                        sent_at[text] = (platform, index, time.monotonic())
                        await driver.say(index, text)
                        expected = reply.text or _final(fake, text)
                        await driver.wait_answers(
                            index, lambda a, t=turn, e=expected: len(a) > t and a[t] == e, 120
                        )

            await asyncio.gather(*(conversation(i) for i in range(conversations)))
            result.seconds = time.monotonic() - started
            cpu1, rss = _rusage()
            result.cpu_seconds, result.peak_rss_mb = cpu1 - cpu0, rss
            result.redis_turn, result.redis_dedupe = trips.count()
            result.messages = conversations * turns
            calls_by_where: dict[str, list[tuple[float, str]]] = {}
            for platform in platforms:
                driver = bot.drivers[platform]
                calls = driver.calls()
                result.platform_calls += len(calls) - before[platform]
                for at, where, text in calls:
                    calls_by_where.setdefault(where, []).append((at, text))
                for index in range(platform_index(platforms, platform), conversations,
                                   len(platforms)):  # fmt: skip
                    result.answered += len(driver.answers(index))
            for request in fake.chat_requests():
                _measure(result, request, sent_at, bot, calls_by_where, counter)
    await redis.aclose()
    return result


def platform_index(platforms: Sequence[str], platform: str) -> int:
    return list(platforms).index(platform)


def _final(fake: FakeOpenAI, text: str) -> str:
    return fake.answer({"messages": [{"role": "user", "content": text}]})


def _measure(
    result: Result,
    request: Recorded,
    sent_at: dict[str, tuple[str, int, float]],
    bot: Any,
    calls_by_where: dict[str, list[tuple[float, str]]],
    counter: TokenCounter,
) -> None:
    messages = request.messages
    last = messages[-1]["content"] if messages else ""
    if last not in sent_at:
        return
    platform, index, at = sent_at[last]
    result.to_llm_ms.append((request.at - at) * 1000)
    result.prompt_tokens.append(sum(4 + counter.text(str(m.get("content", ""))) for m in messages))
    calls = calls_by_where.get(bot.drivers[platform].where(index), [])
    times = [t for t, text in calls if text]
    after_event = bisect.bisect_left(times, at)
    if after_event < len(times):
        result.first_text_ms.append((times[after_event] - at) * 1000)
    if request.first_token:
        position = bisect.bisect_left(times, request.first_token)
        if position < len(times):
            result.token_to_screen_ms.append((times[position] - request.first_token) * 1000)
