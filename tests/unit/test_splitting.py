"""Splitting long answers at a platform's limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from core.streaming.splitting import open_fence, split_text, take_part


def test_short_text_is_one_part():
    assert split_text("hello", 100) == ["hello"]


def test_split_prefers_paragraph_breaks():
    text = "a" * 60 + "\n\n" + "b" * 60
    assert split_text(text, 100) == ["a" * 60 + "\n\n", "b" * 60]


def test_split_falls_back_to_spaces_then_hard_cut():
    words = " ".join(["word"] * 50)
    parts = split_text(words, 40)
    assert all(len(p) <= 40 for p in parts)
    assert "".join(parts) == words
    assert split_text("x" * 95, 40) == ["x" * 40, "x" * 40, "x" * 15]


def test_code_block_starting_late_moves_whole_to_next_part():
    text = "intro " * 10 + "\n```python\nprint(1)\nprint(2)\n```\n"
    part, rest = take_part(text, 70)
    assert "```" not in part
    assert rest.startswith("```python")


def test_code_block_too_long_is_closed_and_reopened():
    code = "\n".join(f"line_{i} = {i}" for i in range(40))
    text = f"```python\n{code}\n```"
    parts = split_text(text, 120)
    assert len(parts) > 1
    for part in parts:
        assert len(part) <= 120
        assert open_fence(part) is None, part  # every part is balanced
    assert parts[1].startswith("```python\n")


def test_open_fence_closes_only_on_a_bare_marker_as_commonmark_does():
    assert open_fence("~~~x~~~ a\n~~~x~~~ b\n") == ("~~~", "x~~~", 0)  # info: not a close
    assert open_fence("```py\ncode\n```js\n") == ("```", "py", 0)
    assert open_fence("~~~x\ncode\n~~~~  \n") is None
    assert open_fence("```py\ncode\n~~~\n") is not None  # the other marker does not close
    assert open_fence("``` `x` ```\n") is None  # backticks in the info: inline code


def test_no_empty_parts():
    assert split_text("   \n\n   ", 10) == []
    assert all(p.strip() for p in split_text("a\n\n\n\n\n\n\n\n\n\n\n\nb", 5))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab `\n#*_"), max_size=600), st.integers(20, 200))
def test_parts_fit_and_keep_the_text(text: str, limit: int):
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    if "```" not in text:
        assert "".join(parts).strip() == text.strip() or "".join(parts) == text


@pytest.mark.parametrize("marker", ["1.", "1)"])
def test_a_long_list_written_with_one_number_numbers_on_in_every_part(marker: str):
    """Models often write `1.` for every item; the whole shows 1, 2, 3 ... A list longer than
    one part used to restart at 1 in the next part."""
    items = [f"{marker} item {n} " + "word " * 20 for n in range(1, 60)]
    text = "Steps:\n\n" + "\n".join(items) + "\n\nDone."
    parts = split_text(text, 1000)
    assert len(parts) > 3
    shown: list[int] = []
    for part in parts:
        tokens = MarkdownIt("commonmark").parse(part)
        start = next((int(t.attrGet("start") or 1) for t in tokens
                      if t.type == "ordered_list_open"), None)  # fmt: skip
        count = sum(t.type == "list_item_open" for t in tokens)
        if start is not None:
            shown += range(start, start + count)
    assert shown == list(range(1, 60))


@pytest.mark.parametrize("limit", range(16, 40))
def test_a_table_cut_after_its_delimiter_row_still_gets_somewhere(limit: int):
    """The rest of a table cut right after its delimiter row used to be the whole table
    again (its header carried over): split_text looped for ever."""
    text = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    parts = split_text(text, limit)
    assert 1 <= len(parts) <= len(text)
    assert any("| 1 | 2 |" in p for p in parts) and any("| 3 | 4 |" in p for p in parts)
    _, rest = take_part(text, limit)
    assert len(rest) < len(text)
