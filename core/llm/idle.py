"""A timeout on the waits of a stream, with one timer for the whole stream.

`asyncio.timeout` around each read of a streamed answer costs a timer handle, a heap push, a
cancel and a Timeout object per chunk; a busy bot reads thousands of chunks a second
(`python -m bench`). This timer is armed once and re-armed only when it fires early.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class IdleTimeout:
    """`with IdleTimeout(s) as idle:` raises TimeoutError when one wait, from `idle.waiting()`
    to `idle.done()`, lasts `s` seconds. Time between waits (the reader's own work while it
    holds a chunk) never counts, as with `asyncio.timeout` around each wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._since: float | None = None  # when the current wait began; None between waits
        self.expired = False
        self._cancelling = 0  # the task's cancel requests on entry (not ours to take back)

    def __enter__(self) -> IdleTimeout:
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("IdleTimeout must be used inside a task")
        self._cancelling = self._task.cancelling()
        self._handle = self._loop.call_later(self.seconds, self._check)
        return self

    def waiting(self) -> None:
        """A wait begins now."""
        self._since = self._loop.time()

    def done(self) -> None:
        """The wait is over."""
        self._since = None

    def _check(self) -> None:
        now = self._loop.time()
        if self._since is None or now < self._since + self.seconds:
            start = now if self._since is None else self._since
            self._handle = self._loop.call_at(start + self.seconds, self._check)
            return
        self.expired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if not self.expired:
            return
        assert self._task is not None
        # Our cancel is taken back whatever leaves the block, as `asyncio.timeout` does; a
        # CancelledError is a timeout only if no cancel from outside came meanwhile.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
