"""Keeps an intake loop (Telegram long polling, the Discord gateway) running.

The SDKs' own loops retry network errors, but an exception they do not expect (a malformed
update or gateway frame, a revoked token) ends them for good, silently, while the process
still looks healthy. The supervisor runs the loop as one task, logs one line when it ends,
starts it again after a backoff (doubling to `max_delay`, back to `first_delay` once a run
lasted `healthy_after` seconds), counts each restart through `on_restart`, and tells
readiness whether the loop is running right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Supervisor:
    """`start()` once; `running` for readiness; `stop()` ends it for good."""

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        on_restart: Callable[[], None] | None = None,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.name = name
        self.run = run
        self.on_restart = on_restart
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.running = False
        self.restarts = 0
        self.ended = asyncio.Event()  # set each time a run ends (start-up waits on it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"intake:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.running = False

    async def _loop(self) -> None:
        delay = self.first_delay
        while True:
            started = time.monotonic()
            self.running = True
            try:
                await self.run()
                why = "it ended"
            except Exception as exc:  # anything: the loop is the thing that must not die
                why = f"{type(exc).__name__}: {str(exc)[:120]}".rstrip(": ")
            finally:
                self.running = False
                self.ended.set()
            if time.monotonic() - started >= self.healthy_after:
                delay = self.first_delay
            log.warning("%s: intake stopped (%s); restarting in %.1fs", self.name, why, delay)
            await asyncio.sleep(delay)  # the backoff itself, not a wait for an event
            delay = min(delay * 2, self.max_delay)
            self.ended.clear()
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart()
