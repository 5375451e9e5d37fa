"""Run the real bot end to end and measure it.

The bot runs alone in its own process (bench/botproc.py) with all three adapters, so its CPU,
memory and profile are its own; the fake platform servers and the driver (tests/drive.py) run
in this process, and the fake OpenAI server in a thread of its own (so a blocking baseline
cannot stall it). Redis is real, reached through a connection that counts round trips.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.wire import WireCapture
from core.config import Secrets, Settings
from core.llm.tokens import TokenCounter
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, driving, running_fakes, secret_env
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply


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


@dataclass
class Result:
    """One scenario's figures."""

    name: str
    messages: int = 0
    answered: int = 0
    seconds: float = 0.0
    to_llm_ms: list[float] = field(default_factory=list)
    wire_to_llm_ms: list[float] = field(default_factory=list)  # --wire: the bot's part only
    token_to_screen_ms: list[float] = field(default_factory=list)
    first_text_ms: list[float] = field(default_factory=list)  # event -> first visible text
    platform_calls: int = 0
    redis_turn: int = 0
    redis_dedupe: int = 0
    redis_lock_only: int = 0
    cpu_seconds: float = 0.0  # the bot process's (or the naive bot's, with its fakes)
    driver_cpu_seconds: float = 0.0  # the fakes' and the driver's, in the benchmark process
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


@asynccontextmanager
async def bot_process(
    settings: Settings,
    secrets: Secrets,
    redis_url: str,
    tmp: Path,
    profile: Path | None = None,
    floor: bool = False,
) -> AsyncIterator[BotProcess]:
    """`python -m bench.botproc` with these settings; its figures are filled in on exit."""
    tag = f"{time.monotonic_ns()}"
    settings_file, stats_file = tmp / f"settings-{tag}.json", tmp / f"stats-{tag}.json"
    settings_file.write_text(settings.model_dump_json())
    env = {**os.environ, **secret_env(secrets)}
    command = [sys.executable, "-m", "bench.botproc", str(settings_file), str(stats_file),
               "--redis-url", redis_url]  # fmt: skip
    if profile is not None:
        command += ["--profile", str(profile)]
    if floor:
        command.append("--floor")
    with (tmp / f"bot-{tag}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=log
        )
        bot = BotProcess(process.pid)
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            if not line.startswith(b"READY "):
                raise RuntimeError(f"the bench bot did not start; see {log.name}")
            bot.port = int(line.split()[1])
            yield bot
        finally:
            if process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 300)
            if stats_file.exists():
                bot.figures.update(json.loads(stats_file.read_text()))


@dataclass
class BotProcess:
    pid: int
    port: int = 0
    figures: dict[str, float] = field(default_factory=dict)

    def traffic_starts(self) -> None:
        os.kill(self.pid, signal.SIGUSR2)


async def run_bot_scenario(
    name: str,
    *,
    redis_url: str,
    platforms: Sequence[str],
    conversations: int,
    turns: int,
    reply: Reply,
    edit_interval: float = 1.0,
    typing_delay: float = 0.0,
    concurrency: int = 1000,
    rate: float | None = None,
    budget: int = 3000,
    key_prefix: str = "bench",
    tmp: Path,
    profile: Path | None = None,
    wire: bool = False,
    floor: bool = False,
    telegram: dict[str, Any] | None = None,
) -> Result:
    """Drive `conversations` x `turns` messages through the bot; measure everything.

    With `rate`, conversations start at that many per second (a steady load) instead of all
    at once (the most the bot can take). With `floor`, the bot process runs the SDK floor
    (bench/floor.py) instead of the core. `telegram` replaces the driver's Telegram options
    (drafts off, rate limits lifted), e.g. with the shipped ones (`--telegram-shipped`)."""
    result = Result(name, budget=budget)
    counter = TokenCounter("estimate")
    overrides = drive_settings_overrides()
    if telegram is not None:
        overrides["telegram"] = telegram
    settings = make_settings(
        f"{key_prefix}-{int(time.time() * 1000)}", tmp,
        platforms=overrides, streaming={"edit_interval": edit_interval,
                                                  "typing_delay": typing_delay},
        context={"token_budget": budget, "max_turns": 60, "tokenizer": "estimate"},
        llm={"chunk_timeout": 30, "max_retries": 2}, log_level="WARNING",
    )  # fmt: skip
    try:
        sent_at: dict[str, tuple[str, int, float]] = {}
        with ThreadedOpenAI(reply) as fake:
            async with running_fakes(fake) as fakes, AsyncExitStack() as stack:
                process = await stack.enter_async_context(
                    bot_process(settings, fakes.secrets, redis_url, tmp, profile, floor)
                )
                bot = await stack.enter_async_context(driving(
                    Bot(None, settings, fake, fakes.slack, fakes.telegram, fakes.discord,
                        port=process.port)
                ))  # fmt: skip
                await _warm_up(bot, platforms, reply, fake)
                capture = None
                if wire:
                    capture = WireCapture(
                        tmp,
                        inbound_to=process.port,
                        inbound_from=fakes.discord.port,
                        model=fake.port,
                    )
                    await capture.start()
                before = {p: len(bot.drivers[p].calls()) for p in platforms}
                # The driver's own garbage from earlier scenarios is collected now, not in the first
                # milliseconds of this one, and what survives is frozen out of later collections:
                # a pause of the driver bunches the open-loop schedule of (d) into a burst (seen:
                # the first 14 events of a 100 msg/s run sent within 3 ms, wire p99 31-64 ms).
                gc.collect()
                gc.freeze()
                process.traffic_starts()
                cpu0, _ = _rusage()
                started = time.monotonic()
                semaphore = asyncio.Semaphore(concurrency)

                async def conversation(index: int) -> None:
                    platform = platforms[index % len(platforms)]
                    driver = bot.drivers[platform]
                    if rate:  # open loop: conversation i starts at i / rate seconds, load or not
                        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
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
                if capture is not None:
                    await capture.stop()
                    result.wire_to_llm_ms = capture.latencies_ms()
                cpu1, _ = _rusage()
                result.driver_cpu_seconds = cpu1 - cpu0
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
            figures = process.figures
            result.cpu_seconds = figures.get("cpu_seconds", 0.0)
            result.peak_rss_mb = figures.get("peak_rss_mb", 0.0)
            result.redis_turn = int(figures.get("redis_turn", 0))
            result.redis_dedupe = int(figures.get("redis_dedupe", 0))
            result.redis_lock_only = int(figures.get("redis_lock_only", 0))
    finally:
        await forget_keys(redis_url, settings.redis.key_prefix)
    return result


async def forget_keys(redis_url: str, prefix: str) -> None:
    """Delete a run's keys (each run has its own prefix): thousands of conversations with a
    week's TTL would otherwise pile up in the shared Redis, and every SCAN there (the tests'
    clean-up, for one) walks them all."""
    client = Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


WARM_UP = 900_000  # conversation numbers for warm-up messages, apart from the measured ones


async def _warm_up(bot: Bot, platforms: Sequence[str], reply: Reply, fake: FakeOpenAI) -> None:
    """One answered message per platform before measuring: the first ones open connections
    and run the SDKs' one-time set-up (measured at 50-160 ms), which is not steady state."""
    for offset, platform in enumerate(platforms):
        driver, text = bot.drivers[platform], f"warm-up on {platform}"
        await driver.say(WARM_UP + offset, text)
        expected = reply.text or _final(fake, text)
        await driver.wait_answers(WARM_UP + offset, lambda a, e=expected: e in a, 30)


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
