"""Reading the model's server-sent events: what the OpenAI API sends, and what SSE allows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.llm import _sse_payloads


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _read(*lines: str) -> list[dict]:
    return [payload async for payload in _sse_payloads(_lines(*lines))]


async def test_payloads_until_done_skipping_comments_and_event_names():
    got = await _read(": keep-alive", "", 'data: {"a": 1}', "", "event: message",
                      'data:{"b": 2}', "", "data: [DONE]", "", 'data: {"late": 1}', "")  # fmt: skip
    assert got == [{"a": 1}, {"b": 2}]


async def test_an_event_spread_over_data_lines_is_joined():
    assert await _read('data: {"a":', "data: 1}", "") == [{"a": 1}]


async def test_a_last_event_without_its_blank_line_is_not_lost():
    assert await _read('data: {"a": 1}') == [{"a": 1}]


async def test_garbage_raises_so_the_turn_reports_a_cut_stream():
    with pytest.raises(ValueError):
        await _read("data: {not json", "")
