"""The benchmark's peak RSS of the bot process is the bot's own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

from bench.botproc import peak_rss_mb

PARENT_MB = 400


def test_a_child_started_by_a_large_parent_reports_its_own_peak():
    ballast = bytearray(PARENT_MB * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page
    assert peak_rss_mb() >= PARENT_MB
    child = subprocess.run(
        [sys.executable, "-c", "from bench.botproc import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    del ballast
    assert 0 < float(child.stdout) < PARENT_MB / 2  # ru_maxrss would read >= 400 here
