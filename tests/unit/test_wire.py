"""The loopback capture's reader: kernel-stamped packets in, per-message latencies out."""

from __future__ import annotations

import struct
from pathlib import Path

from bench.wire import PCAP_NANO, WireCapture, packets


def _frame(source: int, target: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", source, target, 0, 0, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
    return b"\0" * 12 + b"\x08\x00" + ip + tcp + payload


def _pcap(path: Path, records: list[tuple[int, bytes]]) -> Path:
    data = struct.pack("<IHHiIII", PCAP_NANO, 2, 4, 0, 0, 262144, 1)
    for nanoseconds, frame in records:
        seconds, fraction = divmod(nanoseconds, 1_000_000_000)
        data += struct.pack("<IIII", seconds, fraction, len(frame), len(frame)) + frame
    path.write_bytes(data)
    return path


def test_latency_is_the_model_request_packet_minus_the_event_packet(tmp_path: Path):
    capture = WireCapture(tmp_path, inbound_to=8080, inbound_from=9000, model=7000)
    ms = 1_000_000
    _pcap(capture.file, [
        (100 * ms, _frame(50000, 8080, b'{"text": "bench c1 t0"}')),  # a webhook in
        (101 * ms, _frame(9000, 50001, b'{"content": "bench c2 t0"}')),  # a gateway frame in
        (102 * ms, _frame(50002, 6379, b"bench c1 t0")),  # Redis: not counted
        (103 * ms, _frame(50003, 7000, b'"content":"bench c2 t0"')),  # c2's model request
        (104 * ms, _frame(50003, 7000, b'"content":"bench c1 t0"')),  # c1's model request
        (105 * ms, _frame(50003, 7000, b'"bench c1 t0" again, later: first packet counts')),
        (106 * ms, _frame(50004, 8080, b"bench c3 t0")),  # never reached the model
    ])  # fmt: skip
    assert [round(v, 3) for v in sorted(capture.latencies_ms())] == [2.0, 4.0]
    assert len(list(packets(capture.file))) == 7
