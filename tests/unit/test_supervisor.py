"""The supervisor that keeps intake loops running."""

from __future__ import annotations

import asyncio

from adapters.supervisor import Supervisor
from tests.helpers import wait_for


async def test_a_loop_that_fails_or_ends_is_restarted_and_counted():
    runs: list[int] = []
    restarted: list[int] = []
    forever = asyncio.Event()

    async def run() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise KeyError("author")  # a frame the SDK could not read
        if len(runs) == 2:
            return  # a loop that just ends is down too
        await forever.wait()

    supervisor = Supervisor(
        "test", run, on_restart=lambda: restarted.append(1), first_delay=0.01, max_delay=0.02
    )
    assert not supervisor.running
    supervisor.start()
    await wait_for(lambda: len(runs) == 3 and supervisor.running)
    assert supervisor.restarts == 2 and len(restarted) == 2
    await supervisor.stop()
    assert not supervisor.running
