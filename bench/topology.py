"""`python -m bench --topology`: one ingress and N workers, each a process of its own.

For each N (default 1, 2, 3) the benchmark starts `python -m bots run --role ingress` and N
`python -m bots run --role worker` (each its own port, the same config file and Redis, a fresh
key prefix), waits until every process is ready and the workers share the partitions out,
and drives scenario (c) mixed (instant model, 50-token answers, the three platforms at once)
through the ingress. Beside them, `python -m bots run --role all` alone on the same scenario.

Each process's CPU is read from `/proc/<pid>/stat` before the first measured message and after
the last answer, so "CPU per message" is the ingress's and the workers' own. The fakes and the
driver run in this process (the fake OpenAI server in a thread of it), as in the other
scenarios; their CPU is printed apart, as is the Redis server's (`INFO cpu`: a shared Redis
counts its other clients too).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from redis.asyncio import Redis

from bench.harness import (
    WARM_UP,
    Result,
    ThreadedOpenAI,
    _final,
    _measure,
    _rusage,
    forget_keys,
    percentiles,
    platform_index,
)
from core.config import Secrets
from core.llm.tokens import TokenCounter
from tests.conftest import make_settings
from tests.drive import Bot, drive_settings_overrides, driving, running_fakes, secret_env
from tests.fakes.openai_server import Reply

WARM_UP_PER_PLATFORM = 16  # conversations: each worker very likely answers each platform once
SETTLE = 0.3  # seconds after the last answer before the CPU is read
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class TopologyResult:
    """One topology's figures: `workers` 0 is `--role all` alone."""

    workers: int
    result: Result
    ingress_cpu: float = 0.0  # seconds (the whole bot with `--role all`)
    worker_cpu: list[float] = field(default_factory=list)  # seconds, per worker
    worker_turns: list[int] = field(default_factory=list)  # what each worker answered
    retaken: int = 0  # entries a worker took over from another (a lease lost under load)
    extra_answers: int = 0  # answers beyond one per message: restart notes, answered twice
    redis_cpu: float = 0.0  # the Redis server's, all its clients
    load_average: float = 0.0  # at the start: this machine is shared

    @property
    def label(self) -> str:
        if not self.workers:
            return "--role all"
        return f"ingress + {self.workers} worker{'s' if self.workers > 1 else ''}"

    def per_message_ms(self, seconds: float) -> float:
        return seconds / max(self.result.answered, 1) * 1000

    @property
    def bot_cpu(self) -> float:
        return self.ingress_cpu + sum(self.worker_cpu)

    @property
    def feeds(self) -> float | None:
        """How many workers one ingress process keeps busy: a worker's CPU per message over
        the ingress's (each saturating one core)."""
        if not self.workers or not self.ingress_cpu:
            return None
        return sum(self.worker_cpu) / self.ingress_cpu


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


async def redis_cpu(redis_url: str) -> float:
    client = Redis.from_url(redis_url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RoleProcess:
    """One `python -m bots run --role ...`."""

    role: str
    port: int
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return process_cpu(self.pid)

    async def status(self, session: aiohttp.ClientSession, path: str = "/healthz") -> tuple[
        int, dict[str, object]
    ]:  # fmt: skip
        async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
            return response.status, await response.json()


@asynccontextmanager
async def role_process(
    role: str, config: Path, secrets: Secrets, redis_url: str, tmp: Path
) -> AsyncIterator[RoleProcess]:
    """`python -m bots run --role ROLE --config CONFIG` on a port of its own; SIGTERM on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    env.update(secret_env(secrets), REDIS_URL=redis_url, CHATBOT_PORT=str(port))
    log_path = tmp / f"{role}-{port}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bots", "run", "--role", role, "--config", str(config),
            env=env, stdout=log, stderr=log, cwd=tmp,
        )  # fmt: skip
        try:
            yield RoleProcess(role, port, process, log_path)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def wait_ready(
    session: aiohttp.ClientSession, processes: Sequence[RoleProcess], partitions: int
) -> None:
    """Every process answers /readyz, and the workers hold all the partitions, each its
    fair share (a worker that joins takes its share from the others' next lease renewal)."""
    deadline = time.monotonic() + 90
    workers = [p for p in processes if p.role == "worker"]
    share = -(-partitions // max(len(workers), 1))
    while True:
        if time.monotonic() > deadline:
            logs = ", ".join(str(p.log) for p in processes)
            raise RuntimeError(f"the topology did not get ready in 90 s; see {logs}")
        for process in processes:
            if process.process.returncode is not None:
                raise RuntimeError(f"--role {process.role} exited; see {process.log}")
        try:
            ready = all([(await p.status(session, "/readyz"))[0] == 200 for p in processes])
            owned: list[set[int]] = []
            for worker in workers:
                _, health = await worker.status(session)
                shown = health.get("worker")
                held = shown.get("partitions", []) if isinstance(shown, dict) else []
                owned.append(set(held))
        except (aiohttp.ClientError, ValueError):
            ready = False
        if ready and (
            not workers
            or (
                len(set().union(*owned)) == partitions
                and sum(map(len, owned)) == partitions
                and all(len(held) <= share for held in owned)
            )
        ):
            return
        await asyncio.sleep(0.2)


async def worker_counts(
    session: aiohttp.ClientSession, workers: Sequence[RoleProcess], name: str
) -> list[int]:
    """A counter of each worker's /healthz: `turns` or `retaken`."""
    counts = []
    for worker in workers:
        _, health = await worker.status(session)
        shown = health.get("worker")
        counts.append(int(shown.get(name, 0)) if isinstance(shown, dict) else 0)
    return counts


async def run_topology(
    workers: int,
    *,
    redis_url: str,
    tmp: Path,
    platforms: Sequence[str],
    conversations: int,
    turns: int,
    reply: Reply,
    concurrency: int = 200,
    typing_delay: float = 0.0,
) -> TopologyResult:
    """Scenario (c) through one ingress and `workers` workers (0: `--role all` alone)."""
    label = f"{workers} workers" if workers else "--role all"
    result = Result(f"(c) topology: {label}")
    measured = TopologyResult(workers, result, load_average=os.getloadavg()[0])
    settings = make_settings(
        f"bench-topology-{workers}-{int(time.time() * 1000)}", tmp,
        platforms=drive_settings_overrides(),
        streaming={"edit_interval": 1.0, "typing_delay": typing_delay},
        context={"token_budget": 3000, "max_turns": 60, "tokenizer": "estimate"},
        llm={"chunk_timeout": 30, "max_retries": 2}, log_level="WARNING",
    )  # fmt: skip
    config = tmp / f"config-{settings.redis.key_prefix}.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    counter = TokenCounter("estimate")
    try:
        with ThreadedOpenAI(reply) as fake:
            async with running_fakes(fake) as fakes, AsyncExitStack() as stack:
                roles = ["ingress"] + ["worker"] * workers if workers else ["all"]
                processes = [
                    await stack.enter_async_context(
                        role_process(role, config, fakes.secrets, redis_url, tmp)
                    )
                    for role in roles
                ]
                front, workers_ = processes[0], processes[1:]
                session = await stack.enter_async_context(aiohttp.ClientSession())
                await wait_ready(session, processes, settings.workers.partitions)
                bot = await stack.enter_async_context(driving(
                    Bot(None, settings, fake, fakes.slack, fakes.telegram, fakes.discord,
                        port=front.port)
                ))  # fmt: skip
                await _warm_up(bot, platforms, reply)
                turns0 = await worker_counts(session, workers_, "turns")
                retaken0 = await worker_counts(session, workers_, "retaken")
                before = {p: len(bot.drivers[p].calls()) for p in platforms}
                sent_at: dict[str, tuple[str, int, float]] = {}
                gc.collect()
                gc.freeze()
                redis0 = await redis_cpu(redis_url)
                cpu0 = [p.cpu() for p in processes]
                driver0, _ = _rusage()
                started = time.monotonic()
                semaphore = asyncio.Semaphore(concurrency)
                expected = reply.text or ""  # an instant, fixed answer

                async def conversation(index: int) -> None:
                    platform = platforms[index % len(platforms)]
                    driver = bot.drivers[platform]
                    for turn in range(turns):
                        text = f"bench c{index} t{turn}"
                        async with semaphore:
                            sent_at[text] = (platform, index, time.monotonic())
                            await driver.say(index, text)
                            await driver.wait_answers(index, answered(turn, expected), 120)

                await asyncio.gather(*(conversation(i) for i in range(conversations)))
                result.seconds = time.monotonic() - started
                # The last turns save their answer just after it shows, and a worker then
                # acknowledges it: that CPU counts too (idle, a process spends ~nothing).
                await asyncio.sleep(SETTLE)
                cpu1 = [p.cpu() for p in processes]
                driver1, _ = _rusage()
                measured.redis_cpu = await redis_cpu(redis_url) - redis0
                result.driver_cpu_seconds = driver1 - driver0
                spent = [after - was for was, after in zip(cpu0, cpu1, strict=True)]
                measured.ingress_cpu, measured.worker_cpu = spent[0], spent[1:]
                turns1 = await worker_counts(session, workers_, "turns")
                measured.worker_turns = [b - a for a, b in zip(turns0, turns1, strict=True)]
                retaken1 = await worker_counts(session, workers_, "retaken")
                measured.retaken = sum(retaken1) - sum(retaken0)
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
                        answers = driver.answers(index)
                        right = min(answers.count(expected), turns)
                        result.answered += right
                        measured.extra_answers += len(answers) - right
                for request in fake.chat_requests():
                    _measure(result, request, sent_at, bot, calls_by_where, counter)
    finally:
        await forget_keys(redis_url, settings.redis.key_prefix)
    return measured


def answered(turn: int, text: str) -> Callable[[list[str]], bool]:
    """Whether a conversation's answers include `text` `turn + 1` times (a restart note or
    a message answered twice, when a worker lost its lease under load, is counted apart)."""

    def done(answers: list[str]) -> bool:
        return answers.count(text) > turn

    return done


async def _warm_up(bot: Bot, platforms: Sequence[str], reply: Reply) -> None:
    """Several answered conversations per platform before measuring, so that every worker
    has most likely answered on every platform once (connections open, SDKs set up)."""

    async def one(platform: str, number: int) -> None:
        driver, text = bot.drivers[platform], f"warm-up {number} on {platform}"
        await driver.say(number, text)
        expected = reply.text or _final(bot.openai, text)
        await driver.wait_answers(number, lambda answers: expected in answers, 30)

    await asyncio.gather(*(one(platform, WARM_UP + offset * 100 + n)
                           for offset, platform in enumerate(platforms)
                           for n in range(WARM_UP_PER_PLATFORM)))  # fmt: skip


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def topology_table(runs: Sequence[TopologyResult]) -> str:
    """The runs side by side, and how many workers one ingress can feed."""
    header = "| figure | " + " | ".join(r.label for r in runs) + " | unit |"
    lines = [
        "\n### (c) mixed through one ingress and N workers, beside --role all",
        "",
        "; ".join(
            f"{r.label}: {r.result.answered}/{r.result.messages} answered in "
            f"{r.result.seconds:.2f} s (load average {r.load_average:.2f} at start)"
            for r in runs
        ),
        "",
        header,
        "|---|" + "---|" * len(runs) + "---|",
    ]

    def row(label: str, values: Sequence[str], unit: str) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + f" | {unit} |")

    def wall(r: TopologyResult, cpu: float) -> float:
        return cpu / r.result.seconds if r.result.seconds else 0.0

    row("messages per second (end to end)", [f"{r.result.rate:.0f}" for r in runs], "msg/s")
    row("CPU per message: ingress (--role all: the whole bot)",
        [_cell(r.per_message_ms(r.ingress_cpu)) for r in runs], "ms")  # fmt: skip
    row("CPU per message: the workers together",
        [_cell(r.per_message_ms(sum(r.worker_cpu)) if r.workers else None) for r in runs],
        "ms")  # fmt: skip
    row("CPU per message: the bot, all its processes",
        [_cell(r.per_message_ms(r.bot_cpu)) for r in runs], "ms")  # fmt: skip
    row("CPU per message: fakes + driver (not the bot)",
        [_cell(r.per_message_ms(r.result.driver_cpu_seconds)) for r in runs], "ms")  # fmt: skip
    row("CPU per message: Redis server (shared: other clients count too)",
        [_cell(r.per_message_ms(r.redis_cpu)) for r in runs], "ms")  # fmt: skip
    row("cores busy: ingress / workers / fakes+driver / Redis",
        [f"{wall(r, r.ingress_cpu):.2f} / {wall(r, sum(r.worker_cpu)):.2f} / "
         f"{wall(r, r.result.driver_cpu_seconds):.2f} / {wall(r, r.redis_cpu):.2f}"
         for r in runs], "cores")  # fmt: skip
    row("turns answered per worker",
        ["-" if not r.workers else " + ".join(map(str, r.worker_turns)) for r in runs],
        "turns")  # fmt: skip
    row("entries taken over from another worker (a lease lost)",
        ["-" if not r.workers else str(r.retaken) for r in runs], "entries")  # fmt: skip
    row("answers beyond one per message (restart notes, twice answered)",
        [str(r.extra_answers) for r in runs], "answers")  # fmt: skip
    for name, index in (("p50", 0), ("p99", 2)):
        row(f"event -> first visible text {name}",
            [f"{percentiles(r.result.first_text_ms)[index]:.1f}" for r in runs], "ms")  # fmt: skip
    row("one ingress can feed about (worker CPU / ingress CPU per message)",
        [_cell(r.feeds, 1) for r in runs], "workers")  # fmt: skip
    feeds = sorted(f for r in runs if (f := r.feeds) is not None)
    if feeds:
        ingress_ms = [r.per_message_ms(r.ingress_cpu) for r in runs if r.workers]
        worker_ms = [r.per_message_ms(sum(r.worker_cpu)) for r in runs if r.workers]
        lines += [
            "",
            f"One ingress process can feed about {feeds[len(feeds) // 2]:.1f} workers "
            f"(median over the runs; range {feeds[0]:.1f}-{feeds[-1]:.1f}): it spends "
            f"{min(ingress_ms):.2f}-{max(ingress_ms):.2f} ms of CPU per message, a worker "
            f"{min(worker_ms):.2f}-{max(worker_ms):.2f} ms, so on a core of its own it takes "
            f"about {1000 / max(ingress_ms):.0f}-{1000 / min(ingress_ms):.0f} messages/s.",
        ]
    lines.append(
        f"This machine has {os.cpu_count()} cores, shared by the bot's processes, the fakes, "
        "the driver and Redis: messages per second stop growing once about two processes "
        "are busy, whatever the number of workers."
    )
    return "\n".join(lines)
