"""Fetching a platform's file URLs without becoming a way into the bot's network.

An attachment's URL comes from an event, so the bot only fetches from the hosts the platform
serves files from (`allowed_hosts`), follows redirects only to those, and never connects to a
private, loopback, link-local or reserved address: the check runs in the connector's
resolver, so it holds for the address actually connected to (no DNS rebinding between a
check and the connection). The one exception is the configured API's own host (`trusted`):
an operator who points `TELEGRAM_API_URL` at a self-hosted Bot API server on the local
network, or a test at a fake, chose that address.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from core.net import AddressGuard
from core.protocols import FetchError

MAX_REDIRECTS = 3


def host_of(url: str) -> str:
    """The host name of a URL, lower case ('' when it has none)."""
    return (urlsplit(url).hostname or "").lower()


class _PublicResolver(AbstractResolver):
    """Resolves as usual, then refuses a host that has a non-public address (unless the
    operator configured that host): `core.net.AddressGuard` decides."""

    def __init__(self, trusted: frozenset[str]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._guard = AddressGuard.of(trusted=trusted)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self._guard.check(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


class FileFetcher:
    """GETs file bytes from a platform's file hosts, bounded in size and time."""

    def __init__(
        self,
        allowed_hosts: Collection[str],
        *,
        trusted: Collection[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self._trusted = frozenset(h.lower() for h in trusted if h)
        self._allowed = frozenset(h.lower() for h in allowed_hosts if h) | self._trusted
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host not in self._allowed:
            return False
        return parts.scheme == "https" or (parts.scheme == "http" and host in self._trusted)

    async def get(
        self, url: str, *, max_bytes: int, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The body of `url`; `FetchError` when the address is not the platform's, the file
        is larger than `max_bytes`, or the download fails."""
        session = self._open()
        for _ in range(MAX_REDIRECTS + 1):
            if not self.allows(url):
                raise FetchError("the file is not on the platform's file server")
            try:
                async with session.get(
                    url, headers=dict(headers or {}), allow_redirects=False
                ) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status != 200:
                        raise FetchError(f"the platform answered {response.status}")
                    return await _read_bounded(response, max_bytes)
            except FetchError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise FetchError(f"download failed ({type(exc).__name__})") from None
        raise FetchError("too many redirects")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_PublicResolver(self._trusted))
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_bounded(response: Any, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise FetchError(too_large(max_bytes))
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(too_large(max_bytes))
    return bytes(body)


def too_large(max_bytes: int) -> str:
    return f"the file is larger than {max_bytes // 1_000_000 or 1} MB"
