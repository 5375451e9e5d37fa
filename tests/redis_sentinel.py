"""A private Redis Sentinel group for tests: 1 master, 1 replica, 3 sentinels.

Every process is the machine's redis-server on a free port in a temp folder; the sentinels'
config files are written here (Sentinel rewrites them as it learns). Start-up and failover are
awaited by polling the servers themselves (`INFO replication`, `SENTINEL MASTER`) against a
deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis

from tests.redis_server import free_port

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000  # a silent master is subjectively down after this
FAILOVER_TIMEOUT_MS = 5000
DEADLINE = 20.0  # seconds for any one wait below


def sentinel_binary() -> str:
    """The machine's redis-server (CI installs it); Sentinel is `redis-server --sentinel`."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not on PATH: the Sentinel tests need it "
            "(apt-get install redis-server, or brew install redis)"
        )
    return found


def _until(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Poll `check` (errors count as "not yet") until it holds; fail naming `what`."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {deadline:.0f}s waiting for {what} (last error: {last})")


class Node:
    """One redis-server process (a data node or a sentinel) on a free port."""

    def __init__(self, folder: Path, name: str, args: list[str]) -> None:
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [binary, *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--logfile", ""],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class SentinelGroup:
    """1 master + 1 replica + 3 sentinels monitoring them as `SERVICE` (quorum 2)."""

    def __init__(self, folder: Path, *, data_args: tuple[str, ...] = ()) -> None:
        self.folder = folder
        base = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *data_args]
        self.master = Node(folder, "master", base)
        self.replica = Node(folder, "replica", [*base, "--replicaof", "127.0.0.1",
                                                str(self.master.port)])  # fmt: skip
        self.sentinels = [Node(folder, f"sentinel{i}", []) for i in range(3)]
        self.data_nodes = [self.master, self.replica]

    @property
    def addresses(self) -> list[str]:
        """The sentinels as `host:port`, as `redis.sentinels` lists them."""
        return [f"127.0.0.1:{node.port}" for node in self.sentinels]

    def start(self) -> None:
        binary = sentinel_binary()
        self.master.start(binary)
        self.replica.start(binary)
        _until("the replica to sync with the master", self._replica_linked)
        _until("a write on the master to reach the replica", self._write_replicated)
        # Each sentinel is told its id, the replica and the other sentinels up front (what
        # Sentinel itself writes into its file once it has learned them), so the group is
        # ready in well under a second instead of after a few hello periods.
        ids = {node.port: secrets.token_hex(20) for node in self.sentinels}
        for node in self.sentinels:
            others = "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other.port} {ids[other.port]}\n"
                for other in self.sentinels
                if other is not node
            )
            config = node.folder / "sentinel.conf"
            config.write_text(
                f"sentinel myid {ids[node.port]}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}\n" + others
            )
            node.args = [str(config), "--sentinel"]
            node.start(binary)
        _until("the sentinels to see the master, the replica and each other", self._watched)

    def _replica_linked(self, master_port: int | None = None) -> bool:
        master_port = self.master.port if master_port is None else master_port
        for node in self.data_nodes:
            if node.port == master_port or node.process is None:
                continue
            with node.client() as client:
                info = client.info("replication")
            if info.get("master_port") != master_port or info.get("master_link_status") != "up":
                return False
        return True

    def _write_replicated(self) -> bool:
        """Whether a write is acknowledged by the replica (WAIT). A master streams writes to
        a replica that has just loaded its RDB only after the replica's first REPLCONF ACK,
        up to a second later: a master killed before that takes those writes with it."""
        with self.master.client() as client:
            client.set("fixture:ready", 1)
            client.delete("fixture:ready")
            return bool(client.wait(1, 1000) == 1)

    def _watched(self) -> bool:
        for node in self.sentinels:
            with node.client() as client:
                state = client.sentinel_master(SERVICE)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the first sentinel reports it."""
        with self.sentinels[0].client() as client:
            _host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def node_at(self, port: int) -> Node:
        return next(node for node in self.data_nodes if node.port == port)

    def failover(self) -> int:
        """`SENTINEL FAILOVER`: promote the replica; return the new master's port once every
        sentinel names it and it answers as a master."""
        old = self.master_port()
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return self.wait_new_master(old)

    def wait_new_master(self, old: int) -> int:
        """The port of the master that replaced `old`, once a majority of the sentinels name
        it (as a client's discovery then finds it) and it answers as a master."""
        found: list[int] = []

        def moved() -> bool:
            named: list[int] = []
            for node in self.sentinels:
                with contextlib.suppress(redis.RedisError, OSError), node.client() as client:
                    named.append(int(client.sentinel_get_master_addr_by_name(SERVICE)[1]))
            majority = [p for p in set(named) if p != old and named.count(p) >= 2]
            if not majority:
                return False
            with self.node_at(majority[0]).client() as client:
                if client.info("replication")["role"] != "master":
                    return False
            found.append(majority[0])
            return True

        _until(f"a master other than :{old}", moved)
        return found[-1]

    def wait_replicated(self) -> None:
        """Until the demoted master (if running) replicates from the current master."""
        master = self.master_port()
        _until("the old master to replicate from the new one",
               lambda: self._replica_linked(master))  # fmt: skip

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.kill()


@contextlib.asynccontextmanager
async def running_group(
    folder: Path, *, data_args: tuple[str, ...] = ()
) -> AsyncIterator[SentinelGroup]:
    """A started `SentinelGroup`, every process killed on the way out."""
    group = SentinelGroup(folder, data_args=data_args)
    try:
        await asyncio.to_thread(group.start)
        yield group
    finally:
        await asyncio.to_thread(group.stop)
