"""The `fetch_url` tool: a web page's readable text for the model, and never a way into the
bot's own network.

The URL comes from the model, so from whoever writes in the chat. It is fetched only over
http or https, only from public addresses (checked at connect time, on every redirect hop,
by `core.net`), within `max_bytes` and `timeout`, redirects followed here (at most five) so
each hop is a new checked connection. HTML becomes its main text with trafilatura (menus,
footers and cookie banners dropped), in a thread since that is CPU work; plain text,
Markdown and JSON pass as they are; anything else (images, PDFs, binaries) is refused with
words the model can act on. Page text is never logged.

httpcore, not aiohttp: `core` imports no aiohttp (tests/unit/test_layers.py), and httpcore's
connection pool takes a network backend, the documented place for the address check.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import ssl
import zlib
from collections.abc import AsyncIterable, Collection
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import trafilatura
from trafilatura.settings import Document

from core.net import AddressGuard, GuardedBackend, PrivateAddressError, PublicResolver, Resolve
from core.net import system_resolve as _system_resolve
from core.sections import FetchSettings
from core.tools.toolbox import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
EXTRACTION_SECONDS = 10.0  # the tool's bound: the fetch's timeout, then this for the text
USER_AGENT = "chatbot/0.2 (fetch_url: reads a page a chat user asked about)"
ACCEPT = (
    "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8,text/markdown;q=0.8,"
    "application/json;q=0.7,*/*;q=0.1"
)
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"application/json", "application/x-ndjson", "application/ld+json"})


@dataclass(frozen=True, slots=True)
class Page:
    """What a fetch read: the final URL (after redirects), the media type and charset the
    server declared, the body, and whether `max_bytes` cut it."""

    url: str
    content_type: str
    charset: str | None
    body: bytes
    truncated: bool = False


class WebFetcher:
    """GETs public web pages, bounded in bytes and time.

    Each fetch opens its own small connection pool (the hops of one fetch share it), so
    nothing stays open between calls and there is nothing to close. `resolve` is the DNS
    lookup (tests give a fake one); `trusted` names hosts that may be private anyway.
    """

    def __init__(
        self,
        settings: FetchSettings,
        *,
        resolve: Resolve = _system_resolve,
        trusted: Collection[str] = (),
        user_agent: str = USER_AGENT,
    ) -> None:
        self.settings = settings
        guard = AddressGuard.of(allow_private=settings.allow_private, trusted=trusted)
        self._resolver = PublicResolver(guard, resolve)
        self._user_agent = user_agent
        self._ssl: ssl.SSLContext | None = None

    async def get(self, url: str) -> Page:
        """The page at `url`; `ToolError` for a refused address, an HTTP error, a timeout,
        too many redirects, or a type that is not text."""
        timeout = self.settings.timeout
        if self._ssl is None:
            self._ssl = httpcore.default_ssl_context()
        backend = GuardedBackend(self._resolver)
        try:
            async with (
                asyncio.timeout(timeout),
                httpcore.AsyncConnectionPool(
                    ssl_context=self._ssl, network_backend=backend
                ) as pool,
            ):
                return await self._follow(pool, url)
        except (TimeoutError, httpcore.TimeoutException):
            raise ToolError(f"the page did not answer within {timeout:g} seconds") from None
        except PrivateAddressError:
            log.info("fetch_url refused a non-public address")
            raise ToolError(
                "refused: that address is not on the public internet (private, loopback, "
                "link-local or reserved); fetch_url reads public web pages only"
            ) from None
        except httpx.InvalidURL:
            raise ToolError("that is not a valid URL") from None
        except OSError as exc:  # the lookup failed: no such host
            raise ToolError(
                f"cannot reach the site ({type(exc).__name__}: is the host name right?)"
            ) from None
        except (httpcore.ConnectError, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise ToolError(f"the connection failed ({type(exc).__name__})") from None

    async def _follow(self, pool: httpcore.AsyncConnectionPool, url: str) -> Page:
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.settings.timeout)
        headers = {"User-Agent": self._user_agent, "Accept": ACCEPT, "Accept-Encoding": "identity"}
        for _ in range(MAX_REDIRECTS + 1):
            request = httpx.Request("GET", url, headers=headers)
            if request.url.scheme not in ("http", "https"):
                raise ToolError("only http and https URLs can be fetched (https://host/page)")
            if not request.url.host:
                raise ToolError("that is not a valid URL: it has no host")
            target = httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            )
            async with pool.stream(
                "GET", target, headers=request.headers.raw, extensions={"timeout": timeouts}
            ) as response:
                status = response.status
                found = httpx.Headers(response.headers)
                if status in REDIRECTS:
                    location = found.get("location")
                    if not location:
                        raise ToolError(f"the page answered HTTP {status} with no Location")
                    url = str(request.url.join(location))
                    continue
                if status >= 400:
                    raise ToolError(_status_words(status))
                media_type, charset = parse_content_type(found.get("content-type", ""))
                if media_type and text_kind(media_type) is None:
                    raise ToolError(_refused_type(media_type))
                body, truncated = await read_bounded(
                    response.aiter_stream(), self.settings.max_bytes
                )
                encoding = found.get("content-encoding", "identity").strip().lower()
                body, cut = decompress(body, encoding, self.settings.max_bytes)
                truncated = truncated or cut
                log.info(
                    "fetch_url: HTTP %d, %s, %d bytes%s",
                    status,
                    media_type or "no type",
                    len(body),
                    " (cut)" if truncated else "",
                )
                return Page(str(request.url), media_type, charset, body, truncated)
        raise ToolError(f"more than {MAX_REDIRECTS} redirects; the page cannot be reached")


def fetch_url_tool(settings: FetchSettings, fetcher: WebFetcher | None = None) -> Tool:
    """The `fetch_url` tool: `{url}` -> `{url, title, text}` (and a `note` when cut)."""
    web = fetcher or WebFetcher(settings)

    async def run(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            raise ToolError("give the page's address as `url`, e.g. https://example.org/page")
        page = await web.get(url.strip())
        return await readable(page, settings.max_chars, settings.max_bytes)

    schema = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "the page's http or https address"}
        },
        "required": ["url"],
    }
    description = (
        "Read a public web page: its title and main text (menus and footers left out), "
        f"at most {settings.max_chars} characters. HTML, plain text, Markdown and JSON only."
    )
    return Tool("fetch_url", description, schema, run, settings.timeout + EXTRACTION_SECONDS)


async def readable(page: Page, max_chars: int, max_bytes: int) -> dict[str, Any]:
    """The page as the model gets it: `{url, title, text}`, the text cut at `max_chars`, and
    a `note` saying what was cut or why there is no text."""
    kind = text_kind(page.content_type) if page.content_type else sniff(page.body)
    if kind is None:
        raise ToolError(_refused_type(page.content_type or "binary data"))
    title: str | None = None
    if kind == "html":
        title, text = await asyncio.to_thread(extract_html, page.body, page.charset, page.url)
    else:
        text = decode(page.body, page.charset)
    notes = []
    if page.truncated:
        notes.append(f"the page is larger than {max_bytes} bytes; only its start was read")
    if len(text) > max_chars:
        notes.append(f"the text was cut at {max_chars} of its {len(text)} characters")
        text = text[:max_chars]
    if not text.strip():
        notes.append("the page has no readable text (it may need JavaScript)")
    result: dict[str, Any] = {"url": page.url, "title": title, "text": text}
    if notes:
        result["note"] = "; ".join(notes)
    return result


def extract_html(body: bytes, charset: str | None, url: str) -> tuple[str | None, str]:
    """(title, main text) of an HTML page; the whole visible text when trafilatura finds no
    main content. Bytes without a declared charset go to trafilatura, which detects it."""
    html: str | bytes = decode(body, charset) if charset else body
    document = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_comments=False, include_tables=True
    )
    if isinstance(document, Document) and document.text:
        return document.title or None, document.text
    title = document.title if isinstance(document, Document) else None
    return title or None, trafilatura.html2txt(html)


async def read_bounded(chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[bytes, bool]:
    """At most `max_bytes` of a body, and whether there was more (then reading stops)."""
    body = bytearray()
    stream = chunks.__aiter__()
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            body += chunk
            if len(body) > max_bytes:
                return bytes(body[:max_bytes]), True
    return bytes(body), False


def decompress(body: bytes, encoding: str, max_bytes: int) -> tuple[bytes, bool]:
    """The body a server compressed although asked for `identity`: gzip and deflate undone
    up to `max_bytes` (a small bomb stays small), whether more was there; others refused."""
    if encoding in ("", "identity"):
        return body, False
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ToolError(f"the page came compressed as {encoding}, which fetch_url cannot read")
    wbits = zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS  # 32: gzip or zlib
    for bits in (wbits, -zlib.MAX_WBITS):  # deflate is sometimes sent without its header
        try:
            plain = zlib.decompressobj(bits).decompress(body, max_bytes + 1)
        except zlib.error:
            continue
        return plain[:max_bytes], len(plain) > max_bytes
    raise ToolError(f"the page's {encoding} compression is broken")


def parse_content_type(value: str) -> tuple[str, str | None]:
    """`text/html; charset=UTF-8` -> (`text/html`, `utf-8`)."""
    media_type, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, raw = param.partition("=")
        if key.strip().lower() == "charset" and raw.strip(" \"'"):
            charset = raw.strip(" \"'").lower()
    return media_type.strip().lower(), charset


def text_kind(media_type: str) -> str | None:
    """ "html", "text" (passed as it is) or None (refused)."""
    if media_type in HTML_TYPES:
        return "html"
    if media_type.startswith("text/") or media_type in TEXT_TYPES:
        return "text"
    if media_type.startswith("application/") and media_type.endswith(("+json", "/json")):
        return "text"
    return None


def sniff(body: bytes) -> str | None:
    """The kind of a body served without a type: HTML, text (UTF-8, no NUL) or None."""
    head = body[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if b"\x00" in body[:8192]:
        return None
    try:
        body[:8192].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 8188:  # not merely a character cut at the window's edge
            return None
    return "text"


def decode(body: bytes, charset: str | None) -> str:
    """The body as text in its declared charset (UTF-8 when none or unknown)."""
    name = charset or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    return body.decode(name, errors="replace")


def _status_words(status: int) -> str:
    if status in (401, 403):
        return f"the page answered HTTP {status}: it needs a login or refuses bots"
    if status == 404:
        return "the page answered HTTP 404: there is no page at that address"
    if status == 429:
        return "the page answered HTTP 429: too many requests, try later"
    if status >= 500:
        return f"the page answered HTTP {status}: the site has a problem, try later"
    return f"the page answered HTTP {status}"


def _refused_type(media_type: str) -> str:
    return (
        f"the address serves {media_type}, not a web page or text; fetch_url reads HTML, "
        "plain text, Markdown and JSON only (no images, PDFs or other files)"
    )
