"""The throttled log that every webhook's refusals go through."""

from __future__ import annotations

import logging

import pytest

from adapters.webhook_guard import Refused, ThrottledLog, json_object


def test_one_line_per_reason_per_period_counting_the_rest(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    log = ThrottledLog(logging.getLogger("test.guard"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            log.warning("slack: unsigned")
        log.warning("slack: bad JSON")
        now[0] = 61.0
        log.warning("slack: unsigned")
    assert [r.getMessage() for r in caplog.records] == [
        "slack: unsigned",
        "slack: bad JSON",
        "slack: unsigned (and 49 more since)",
    ]


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b"\xff", b"{", b"[" * 5000 + b"]" * 5000])
def test_json_object_refuses_everything_but_an_object(body: bytes):
    with pytest.raises(Refused) as info:
        json_object(body)
    assert info.value.status == 400
