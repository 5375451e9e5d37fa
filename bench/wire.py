"""Bot-added latency on the wire: a packet capture of loopback while a scenario runs.

The driver's own clock ("event -> LLM request") starts before the driver has even built its
request and stops when the fake OpenAI server's thread gets around to it, so it includes the
harness. The wire does not: it sees the packet that brings an event to the bot (a webhook POST
to the bot's port, or a gateway frame from the fake Discord) and the packet that carries the
model request out of it (to the fake OpenAI's port), both stamped by the kernel. Their
difference is the bot-added latency as issue 8 defines it: arrival to LLM request.

Needs `tcpdump` (Debian's package) and the right to capture on `lo` (root); `--wire` only.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

TEXT = re.compile(rb"bench c\d+ t\d+")  # the driver's message texts (bench/harness.py)
ETHERNET = 14
PCAP_NANO = 0xA1B23C4D


class WireError(Exception):
    """The capture cannot run here; the message says why."""


class WireCapture:
    """`tcpdump` on loopback for the bot's inbound ports and the model's port."""

    def __init__(self, folder: Path, *, inbound_to: int, inbound_from: int, model: int) -> None:
        self.file = folder / f"wire-{inbound_to}-{model}.pcap"
        self.inbound_to = inbound_to  # the bot's HTTP port: webhooks arrive there
        self.inbound_from = inbound_from  # the fake Discord: gateway frames come from there
        self.model = model  # the fake OpenAI: model requests go there
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise WireError("--wire needs tcpdump (apt-get install tcpdump)")
        ports = " or ".join(f"port {p}" for p in (self.inbound_to, self.inbound_from, self.model))
        self._process = await asyncio.create_subprocess_exec(
            tcpdump, "-i", "lo", "-U", "-n", "-B", "65536", "--time-stamp-precision=nano",
            "-w", str(self.file), f"tcp and ({ports})",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stderr is not None
        line = await asyncio.wait_for(self._process.stderr.readline(), 10)
        if b"listening on" not in line:
            await self._process.wait()
            raise WireError(f"tcpdump did not start: {line.decode(errors='replace').strip()}")

    async def stop(self) -> None:
        """Stop once every packet so far is in the file: a marker sent last must be there."""
        if self._process is None or self._process.returncode is not None:
            return
        marker = f"GET /wire-end-{id(self)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        _, writer = await asyncio.open_connection("127.0.0.1", self.model)
        writer.write(marker)
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # tcpdump writes each packet as it comes (-U), to a file: nothing to wait on but it
        while not await asyncio.to_thread(self._ends_with, marker):
            if loop.time() > deadline:
                raise WireError("the capture missed its end marker: packets were lost")
            await asyncio.sleep(0.05)
        writer.close()
        await writer.wait_closed()
        self._process.send_signal(signal.SIGINT)
        assert self._process.stderr is not None
        summary = (await asyncio.wait_for(self._process.stderr.read(), 10)).decode()
        await asyncio.wait_for(self._process.wait(), 10)
        dropped = re.search(r"(\d+) packets? dropped by kernel", summary)
        if dropped and int(dropped.group(1)):
            raise WireError(f"tcpdump dropped {dropped.group(1)} packets: the timing is partial")

    def _ends_with(self, marker: bytes) -> bool:
        with self.file.open("rb") as capture:
            capture.seek(max(0, capture.seek(0, 2) - 65536))
            return marker in capture.read()

    def latencies_ms(self) -> list[float]:
        """Per message text: its model request's first packet minus its event's first packet.

        Each packet is searched on its own: a text split across two TCP segments (only in a
        request over ~64 KB on loopback) would be missed; the benchmark's are far smaller."""
        arrived: dict[bytes, float] = {}
        requested: dict[bytes, float] = {}
        for at, source, target, payload in packets(self.file):
            if target == self.model:
                seen = requested
            elif target == self.inbound_to or source == self.inbound_from:
                seen = arrived
            else:
                continue
            for text in TEXT.findall(payload):
                seen.setdefault(text, at)
        return [(requested[text] - at) * 1000 for text, at in arrived.items() if text in requested]


def packets(file: Path) -> Iterator[tuple[float, int, int, bytes]]:
    """(time, source port, target port, TCP payload) of each IPv4 TCP packet with a payload."""
    data = file.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack_from("<I", data)[0]
    scale = 1e-9 if magic == PCAP_NANO else 1e-6
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        if len(frame) < ETHERNET + 20 or frame[12:14] != b"\x08\x00":
            continue  # not IPv4
        ip = ETHERNET
        ip_length = (frame[ip] & 0x0F) * 4
        if frame[ip + 9] != 6:
            continue  # not TCP
        total = struct.unpack_from("!H", frame, ip + 2)[0]
        tcp = ip + ip_length
        source, target = struct.unpack_from("!HH", frame, tcp)
        tcp_length = (frame[tcp + 12] >> 4) * 4
        payload = frame[tcp + tcp_length : ip + total]
        if payload:
            yield seconds + fraction * scale, source, target, payload
