"""IdleTimeout: a wait that lasts too long times out; the reader's own time between waits
does not count; a cancel from outside stays a cancel."""

from __future__ import annotations

import asyncio

import pytest

from core.llm.idle import IdleTimeout


async def test_a_wait_longer_than_the_timeout_raises_timeout_error():
    never = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), IdleTimeout(0.05) as idle:
        idle.waiting()
        await never
    assert 0.05 <= loop.time() - started < 1.0
    assert idle.expired


async def test_time_between_waits_never_counts():
    """Ten short waits, each with busy time between them, far longer than the timeout in all."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with IdleTimeout(0.05) as idle:
        for _ in range(10):
            idle.waiting()
            await asyncio.sleep(0.01)  # the wait itself: shorter than the timeout
            idle.done()
            held = loop.create_future()  # the reader's own work: no wait is running
            loop.call_later(0.03, held.set_result, None)
            await held
    assert loop.time() - started > 0.05 * 3
    assert not idle.expired


async def test_the_timer_is_re_armed_from_the_start_of_the_current_wait():
    """The timer first fires while no wait runs; the wait that begins later still gets its
    whole timeout."""
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), IdleTimeout(0.1) as idle:
        held = loop.create_future()
        loop.call_later(0.15, held.set_result, None)
        await held
        idle.waiting()
        began = loop.time()
        await loop.create_future()
    assert loop.time() - began >= 0.1


async def test_a_cancel_from_outside_is_not_turned_into_a_timeout():
    entered = asyncio.Event()

    async def reader() -> None:
        with IdleTimeout(10) as idle:
            idle.waiting()
            entered.set()
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(reader())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _wait_whose_cancel_becomes_a_transport_error() -> None:
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        raise ConnectionError("closed while cleaning up") from None


async def test_an_expired_timer_is_taken_back_whatever_leaves_the_block():
    with pytest.raises(ConnectionError), IdleTimeout(0.02) as idle:
        idle.waiting()
        await _wait_whose_cancel_becomes_a_transport_error()
    assert idle.expired
    assert asyncio.current_task().cancelling() == 0


async def test_the_next_stream_in_the_same_task_still_times_out():
    with pytest.raises(ConnectionError), IdleTimeout(0.02) as idle:
        idle.waiting()
        await _wait_whose_cancel_becomes_a_transport_error()
    with pytest.raises(TimeoutError), IdleTimeout(0.02) as idle:
        idle.waiting()
        await asyncio.get_running_loop().create_future()
