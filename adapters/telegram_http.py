"""python-telegram-bot's network layer on aiohttp instead of httpx.

PTB's own `HTTPXRequest` spends milliseconds of CPU per call once hundreds of answers stream
at once: httpcore's pool rescans every connection and request on each call. The benchmark
(`python -m bench`, bench/RESULTS.md) measured it as the biggest cost of a Telegram turn;
aiohttp's connector does the same work for a fraction. PTB supports exactly this through
`BaseRequest`; everything above `do_request` (JSON decoding, error mapping, retries, the rate
limiter) stays PTB's.

Files (`File.download_*`) come through the same object, so a response is read only up to
`max_body` bytes: a file larger than announced never fills memory.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


class ResponseTooLarge(NetworkError):
    """A response (a downloaded file) went past `max_body`."""


class AiohttpRequest(BaseRequest):
    """One aiohttp session per PTB request object (PTB keeps two: calls and getUpdates)."""

    def __init__(
        self,
        *,
        connection_limit: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        max_body: int | None = None,
    ) -> None:
        self._limit = connection_limit
        self._read = read_timeout
        self._write = write_timeout
        self._connect = connect_timeout
        self._pool = pool_timeout
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                headers={"User-Agent": self.USER_AGENT},
            )

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self._pool if isinstance(pool_timeout, DefaultValue) else pool_timeout
        # aiohttp's `connect` covers waiting for a pooled connection and connecting
        wait = None if connect is None or pool is None else connect + pool
        timeout = aiohttp.ClientTimeout(total=None, connect=wait, sock_connect=connect,
                                        sock_read=read)  # fmt: skip
        try:
            async with self._session.request(
                method, url, data=_body(request_data), timeout=timeout
            ) as response:
                return response.status, await self._body_of(response)
        except TimeoutError as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            # the URL holds the bot token: name the error, never repeat its text
            raise NetworkError(f"aiohttp.{type(exc).__name__}") from None

    async def _body_of(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, at most `max_body` bytes (`ResponseTooLarge` past that). A response
        with a length (every Bot API answer) is read at once, as before."""
        bound, declared = self._max_body, response.content_length
        if bound is None or (declared is not None and declared <= bound):
            return await response.read()
        if declared is not None:
            raise ResponseTooLarge(f"response larger than {bound} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > bound:
                raise ResponseTooLarge(f"response larger than {bound} bytes")
        return bytes(body)


def _body(request_data: RequestData | None) -> Any:
    """Form fields as PTB encodes them; a multipart form when files are attached."""
    if request_data is None:
        return None
    fields = request_data.json_parameters
    if not request_data.contains_files:
        return fields
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, part in request_data.multipart_data.items():
        filename, content, mime = part
        form.add_field(name, content, filename=filename, content_type=mime)
    return form
