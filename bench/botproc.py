"""The bot under benchmark, in a process of its own: `python -m bench.botproc SETTINGS STATS`.

Only the bot runs here, so CPU per message, peak RSS and the profile are the bot's alone
(the fakes and the driver run in the benchmark's process). Secrets come from the
environment, as in `chatbot run`; `--redis-url` names the Redis, reached through a
connection that counts round trips. Protocol with the benchmark:

- stdout `READY <port>` once the bot serves;
- SIGUSR2: traffic starts now (counters and CPU reset, the profiler starts);
- SIGTERM: stop, write the figures as JSON to STATS (and the profile beside it), exit.

`--floor` runs the SDK floor (bench/floor.py) instead of the core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from bench.floor import install_floor
from bench.roundtrips import RoundTrips
from bots.app import BotApp, freeze_startup_objects
from bots.logs import setup_logging
from core.config import Secrets, Settings


def cpu_seconds() -> float:
    """User and system CPU of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not `ru_maxrss`: Linux carries it over from the parent
    across fork and exec, so a bot started by a 220 MB benchmark read 220 MB whatever it
    used itself. The address space's high-water mark (VmHWM) starts afresh at exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


async def serve(
    settings: Settings, secrets: Secrets, redis_url: str, profile: bool, floor: bool = False
) -> tuple[dict[str, float], Any]:
    """Run until SIGTERM; return the figures and the profiler (if any)."""
    trips = RoundTrips(redis_url)
    redis = trips.client()
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    if floor:
        install_floor(app)
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    marks: dict[str, Any] = {"cpu0": cpu_seconds()}
    profiler: Any = None

    def start_traffic() -> None:
        nonlocal profiler
        trips.reset()
        marks["cpu0"] = cpu_seconds()
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001, async_mode="disabled")
            profiler.start()

    loop.add_signal_handler(signal.SIGUSR2, start_traffic)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {app.port}", flush=True)
    await stop.wait()
    await app.stop()  # finishes the turns still saving their last answer: they count too
    cpu = cpu_seconds() - marks["cpu0"]
    if profiler is not None:
        profiler.stop()  # rendered after the loop: rendering takes seconds
    turn, dedupe, lock_only = trips.count()
    await redis.aclose()
    peak = peak_rss_mb()
    figures = {
        "cpu_seconds": cpu,
        "peak_rss_mb": peak,
        "redis_turn": turn,
        "redis_dedupe": dedupe,
        "redis_lock_only": lock_only,
    }
    return figures, profiler


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.botproc", description=__doc__)
    parser.add_argument("settings", type=Path, help="Settings as JSON")
    parser.add_argument("stats", type=Path, help="where the figures are written on SIGTERM")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile here")
    parser.add_argument("--floor", action="store_true", help="the SDK floor, not the core")
    args = parser.parse_args()
    settings = Settings.model_validate_json(args.settings.read_text())
    secrets = Secrets()
    setup_logging(settings.log_level, secrets.values(), fmt=settings.log_format)
    served = serve(settings, secrets, args.redis_url, bool(args.profile), args.floor)
    figures, profiler = asyncio.run(served)
    args.stats.write_text(json.dumps(figures))
    if profiler is not None:
        args.profile.write_text(profiler.output_text(unicode=False, color=False))
        profiler.last_session.save(str(args.profile.with_suffix(".pyisession")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
