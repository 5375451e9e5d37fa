"""The public internet told apart from everything else, so that fetching a URL someone typed
(or a platform's event carried) cannot reach the bot's own network: loopback, the private
ranges, link-local (169.254.169.254, the cloud metadata service), multicast, reserved.

The check belongs where the connection is made: a name is resolved once, every address is
checked, and the connection goes to a checked address, so nothing can re-resolve the name to
a private address between the check and the connection (DNS rebinding). A redirect is a new
connection, so every hop is checked anew. `PublicResolver` is that check with the lookup
injected (tests give it a fake DNS); `GuardedBackend` puts it under an httpcore connection
pool (httpcore's documented network backend hook); `adapters/file_fetch.py` puts the same
`AddressGuard` in aiohttp's resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

import httpcore

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""A DNS lookup: (host, port) -> the host's addresses, as text."""


def is_public(address: str) -> bool:
    """An address the internet routes: not private, loopback, link-local (cloud metadata),
    multicast, reserved or unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def is_ip(host: str) -> bool:
    """The host is an address literal (`127.0.0.1`, `::1`), not a name."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class PrivateAddressError(OSError):
    """The host resolves to an address that is not on the public internet; an OSError, as
    any connection failure is, so HTTP clients report it as one."""


@dataclass(frozen=True, slots=True)
class AddressGuard:
    """Which hosts may be connected to: those whose every address is public, the `trusted`
    host names (an operator's own server, chosen by config), or any when `allow_private`."""

    allow_private: bool = False
    trusted: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, allow_private: bool = False, trusted: Collection[str] = ()) -> AddressGuard:
        """A guard with the trusted names normalised (lower case, no empties)."""
        return cls(allow_private, frozenset(host.lower() for host in trusted if host))

    def permits(self, host: str, addresses: Iterable[str]) -> bool:
        """Whether `host`, resolved to `addresses`, may be connected to. A host with one
        private address among public ones is refused: the client may pick any of them."""
        if self.allow_private or host.lower().rstrip(".") in self.trusted:
            return True
        return all(is_public(address) for address in addresses)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """`PrivateAddressError` unless `permits`."""
        if not self.permits(host, addresses):
            raise PrivateAddressError(f"{host} is not a public internet address")


async def system_resolve(host: str, port: int) -> list[str]:
    """The system's lookup (getaddrinfo in a thread, as asyncio does), addresses in its
    order, each once."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class PublicResolver:
    """Resolves a host (an address literal is its own answer) and refuses it unless the guard
    permits every address it resolved to."""

    def __init__(self, guard: AddressGuard, resolve: Resolve = system_resolve) -> None:
        self.guard = guard
        self._resolve = resolve

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, all of them checked; `PrivateAddressError` or OSError."""
        addresses = [host] if is_ip(host) else await self._resolve(host, port)
        if not addresses:
            raise OSError(f"{host} has no address")
        self.guard.check(host, addresses)
        return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses `resolver` checked, and to
    those directly (TLS still verifies the host name: httpcore sends it as SNI)."""

    def __init__(
        self, resolver: PublicResolver, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolver.resolve(host, port)
        failure: Exception | None = None
        for address in addresses:  # in the resolver's order, the next when one refuses
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None, "resolve returns at least one address"
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise PrivateAddressError("a unix socket is not a public internet address")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
