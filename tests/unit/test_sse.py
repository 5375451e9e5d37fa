"""Reading the model's server-sent events: what the OpenAI API sends, and what SSE allows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.llm.openai_chat import _sse_payloads


async def _reads(*reads: bytes) -> AsyncIterator[bytes]:
    for read in reads:
        yield read


async def _read_all(*reads: bytes) -> list[dict]:
    return [payload async for payload in _sse_payloads(_reads(*reads))]


async def _read(*lines: str, end: str = "\n") -> list[dict]:
    """The lines as one network read, each ended by `end`."""
    return await _read_all("".join(line + end for line in lines).encode())


async def test_payloads_until_done_skipping_comments_and_event_names():
    got = await _read(": keep-alive", "", 'data: {"a": 1}', "", "event: message",
                      'data:{"b": 2}', "", "data: [DONE]", "", 'data: {"late": 1}', "")  # fmt: skip
    assert got == [{"a": 1}, {"b": 2}]


async def test_an_event_spread_over_data_lines_is_joined():
    assert await _read('data: {"a":', "data: 1}", "") == [{"a": 1}]


async def test_a_last_event_without_its_blank_line_is_not_lost():
    assert await _read('data: {"a": 1}') == [{"a": 1}]
    assert await _read_all(b'data: {"a": 1}') == [{"a": 1}]  # nor without its line break


@pytest.mark.parametrize("end", ["\r\n", "\r"])
async def test_crlf_and_cr_line_ends_are_lines_too(end: str):
    got = await _read('data: {"a": 1}', "", ": ping", 'data: {"b": 2}', "", "data: [DONE]", "",
                      end=end)  # fmt: skip
    assert got == [{"a": 1}, {"b": 2}]


async def test_events_split_anywhere_between_reads_come_out_whole():
    stream = 'data: {"t": "héllo ✓"}\r\n\r\ndata: {"t": "two"}\r\n\r\ndata: [DONE]\r\n\r\n'
    raw = stream.encode()
    for cut in range(1, len(raw)):  # every cut, inside CRLFs and inside multi-byte characters
        got = await _read_all(raw[:cut], raw[cut:])
        assert got == [{"t": "héllo ✓"}, {"t": "two"}], cut


async def test_one_byte_per_read_still_parses():
    raw = b'data: {"a": 1}\n\ndata: {"b": 2}\n\n'
    assert await _read_all(*(raw[i : i + 1] for i in range(len(raw)))) == [{"a": 1}, {"b": 2}]


async def test_garbage_raises_so_the_turn_reports_a_cut_stream():
    with pytest.raises(ValueError):
        await _read("data: {not json", "")
