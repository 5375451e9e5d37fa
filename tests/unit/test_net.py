"""Public or not: the address decisions, a resolver given a fake DNS, and the httpcore backend
that connects only to checked addresses (a fake inner backend records what it was asked)."""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import pytest

from adapters.file_fetch import _PublicResolver
from core.net import (
    AddressGuard,
    GuardedBackend,
    PrivateAddressError,
    PublicResolver,
    is_public,
    system_resolve,
)

PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "127.1.2.3",
    "10.0.0.1",  # private
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local: the cloud metadata service
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # unspecified
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1%eth0",  # link-local with a zone
    "fc00::1",  # unique local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str):
    assert is_public(address)


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses(address: str):
    assert not is_public(address)


def test_guard_refuses_a_host_with_any_private_address():
    guard = AddressGuard()
    assert guard.permits("example.org", ["93.184.216.34"])
    assert not guard.permits("mixed.test", ["93.184.216.34", "10.0.0.5"])  # rebinding bait
    with pytest.raises(PrivateAddressError, match=r"mixed\.test"):
        guard.check("mixed.test", ["93.184.216.34", "10.0.0.5"])


def test_guard_trusted_hosts_and_allow_private():
    trusted = AddressGuard.of(trusted=["Bot-API.internal", ""])
    assert trusted.permits("bot-api.internal", ["10.0.0.5"])
    assert trusted.permits("BOT-API.internal.", ["10.0.0.5"])  # case, the root's dot
    assert not trusted.permits("other.internal", ["10.0.0.5"])
    assert AddressGuard.of(allow_private=True).permits("anything", ["127.0.0.1"])


class FakeDNS:
    """A lookup from a table, recording the names it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")  # as getaddrinfo's gaierror is
        return self.table[host]


DNS = {
    "news.example": ["93.184.216.34"],
    "evil.example": ["127.0.0.1"],  # a public-looking name that resolves to loopback
    "metadata.example": ["169.254.169.254"],
    "split.example": ["93.184.216.34", "192.168.0.10"],
    "internal.example": ["10.1.2.3"],
    "nowhere.example": [],
}


async def test_resolver_checks_what_the_fake_dns_says():
    dns = FakeDNS(DNS)
    resolver = PublicResolver(AddressGuard.of(trusted=["internal.example"]), dns)
    assert await resolver.resolve("news.example", 443) == ["93.184.216.34"]
    assert await resolver.resolve("internal.example", 80) == ["10.1.2.3"]  # trusted
    for host in ("evil.example", "metadata.example", "split.example"):
        with pytest.raises(PrivateAddressError):
            await resolver.resolve(host, 80)
    with pytest.raises(OSError, match="no address"):
        await resolver.resolve("nowhere.example", 80)
    with pytest.raises(OSError, match="no such host"):
        await resolver.resolve("missing.example", 80)
    # an address literal is its own answer: no lookup, still checked
    dns.asked.clear()
    assert await resolver.resolve("8.8.8.8", 53) == ["8.8.8.8"]
    for literal in ("127.0.0.1", "169.254.169.254", "::1"):
        with pytest.raises(PrivateAddressError):
            await resolver.resolve(literal, 80)
    assert dns.asked == []


async def test_system_resolver_refuses_localhost():
    """A real name that resolves to loopback, through the system's lookup."""
    assert set(await system_resolve("localhost", 80)) <= {"127.0.0.1", "::1"}
    with pytest.raises(PrivateAddressError):
        await PublicResolver(AddressGuard()).resolve("localhost", 80)
    assert await PublicResolver(AddressGuard.of(allow_private=True)).resolve("localhost", 80)


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """An inner backend that connects nowhere: records the address asked, refuses the ones
    listed in `down`, and hands back a dummy stream for the others."""

    def __init__(self, down: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.down = set(down)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self.down:
            raise httpcore.ConnectError("refused")
        return httpcore.AsyncNetworkStream()

    async def sleep(self, seconds: float) -> None:
        return None


async def test_backend_connects_only_to_checked_addresses():
    inner = RecordingBackend()
    backend = GuardedBackend(PublicResolver(AddressGuard(), FakeDNS(DNS)), inner)
    await backend.connect_tcp("news.example", 443)
    assert inner.connects == [("93.184.216.34", 443)]  # the checked address, not the name
    for host in ("evil.example", "metadata.example", "split.example", "127.0.0.1"):
        with pytest.raises(PrivateAddressError):
            await backend.connect_tcp(host, 80)
    assert inner.connects == [("93.184.216.34", 443)]  # refused before any connection
    with pytest.raises(PrivateAddressError):
        await backend.connect_unix_socket("/var/run/docker.sock")


async def test_backend_tries_the_next_address():
    dns = FakeDNS({"two.example": ["93.184.216.34", "93.184.216.35"]})
    inner = RecordingBackend(down={"93.184.216.34"})
    backend = GuardedBackend(PublicResolver(AddressGuard(), dns), inner)
    await backend.connect_tcp("two.example", 80)
    assert inner.connects == [("93.184.216.34", 80), ("93.184.216.35", 80)]
    inner.down.add("93.184.216.35")
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("two.example", 80)


async def test_file_fetch_resolver_asks_the_same_guard():
    resolver = _PublicResolver(frozenset())
    try:
        with pytest.raises(PrivateAddressError):
            await resolver.resolve("localhost", 80)
        trusting = _PublicResolver(frozenset({"localhost"}))
        assert await trusting.resolve("localhost", 80)
        await trusting.close()
    finally:
        await resolver.close()
