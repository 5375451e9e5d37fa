"""Where every asyncio task is waiting, for `kill -USR1 <pid>` on a bot that seems stuck.

`Task.get_stack()` shows only a task's outermost coroutine; a stuck turn hides several
awaits deeper (a lock, a pool, an HTTP read), so this follows the await chain to the bottom.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


def await_chain(coroutine: Any) -> list[str]:
    """file:line function for each frame from `coroutine` down to what it awaits now."""
    frames: list[str] = []
    seen: set[int] = set()
    while coroutine is not None and id(coroutine) not in seen:
        seen.add(id(coroutine))
        frame = next((getattr(coroutine, a) for a in _FRAME if getattr(coroutine, a, None)), None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = next((getattr(coroutine, a) for a in _AWAIT if getattr(coroutine, a, None)), None)
        if awaited is not None and not any(hasattr(awaited, a) for a in _FRAME):
            # an async generator's asend/athrow hides its generator but the GC can see it
            generators = [g for g in gc.get_referents(awaited) if hasattr(g, "ag_frame")]
            if not generators:
                frames.append(f"<awaiting {awaited!r:.160}>")
                break
            awaited = generators[0]
        coroutine = awaited
    return frames


_FRAME = ("cr_frame", "ag_frame", "gi_frame")
_AWAIT = ("cr_await", "ag_await", "gi_yieldfrom")


def dump_tasks() -> str:
    """Every task of the running loop with its await chain."""
    lines: list[str] = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        lines.append(f"task {task.get_name()}:")
        lines.extend(f"    {frame}" for frame in await_chain(task.get_coro()))
    return "\n".join(lines)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Log the task dump on SIGUSR1."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("tasks:\n%s", dump_tasks()))
