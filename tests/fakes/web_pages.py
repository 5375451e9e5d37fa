"""A small local web site on 127.0.0.1 port 0, for the `fetch_url` tool.

`/article` is a news page with a menu, a cookie banner and a footer around the story (what
trafilatura should keep is `ARTICLE_SENTENCES`, what it should drop `BOILERPLATE`);
`/long` the same with a long story; `/plain`, `/notes.md`, `/data.json` text as it is;
`/report.pdf`, `/photo.png` files; `/chain/{n}` redirects n
times, then to `/article`; `/go?to=URL` redirects anywhere; `/loop` redirects to itself;
`/slow` answers after `slow_seconds`; `/drip` sends a byte every 0.2 s forever (each read is
quick, the whole never ends); `/huge` streams megabytes; `/gzipped` is gzip although
identity was asked for; `/missing` 404, `/broken` 500.
Every request's path and headers are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes.common import serve_locally

TITLE = "Tides of Oslo"
ARTICLE_SENTENCES = [
    "The fjord rose by twelve centimetres on Tuesday, the largest spring tide recorded in "
    "the harbour since 1987, according to the port authority.",
    "Fishermen at Aker Brygge moved their boats to the inner basin before dawn, and the "
    "ferry to Nesodden ran on its winter timetable for the day.",
    "Oceanographers at the university said the tide matched their forecast within two "
    "centimetres, and that a north wind had held the water back.",
]
BOILERPLATE = [
    "Subscribe to our newsletter",
    "We use cookies to improve your experience",
    "Copyright 2024 The Harbour Post",
    "Privacy policy",
]
PLAIN = "Plain notes.\nLine two of the notes, kept exactly as served.\n"
MARKDOWN = "# Notes\n\n- one\n- two\n"
JSON_BODY = '{"tide_cm": 12, "place": "Oslo"}'
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"


def article_html(paragraphs: list[str]) -> str:
    body = "\n".join(f"<p>{text}</p>" for text in paragraphs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE} | The Harbour Post</title></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/sport">Sport</a></li><li><a href="/subscribe">{BOILERPLATE[0]}</a></li></ul></nav>
<div class="cookie-banner"><p>{BOILERPLATE[1]}. <button>Accept</button></p></div>
<main><article><h1>{TITLE}</h1>
{body}
</article></main>
<footer><p>{BOILERPLATE[2]}. <a href="/privacy">{BOILERPLATE[3]}</a>.
<a href="/contact">Contact us</a>.</p></footer>
</body></html>"""


@dataclass
class Visit:
    """One request the site received."""

    path: str
    headers: dict[str, str]


class FakeSite:
    """Start with `async with FakeSite() as site:`; URLs are `site.url("/article")`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # the name URLs use (a test's fake DNS may map it to 127.0.0.1)
        self.port = 0
        self.slow_seconds = 5.0
        self.visits: list[Visit] = []
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [visit.path for visit in self.visits]

    async def __aenter__(self) -> FakeSite:
        app = web.Application(middlewares=[self._record])
        get = app.router.add_get
        get("/article", self._html(article_html(ARTICLE_SENTENCES)))
        get("/long", self._html(article_html(ARTICLE_SENTENCES * 60)))
        get("/plain", self._body(PLAIN.encode(), "text/plain; charset=utf-8"))
        get("/notes.md", self._body(MARKDOWN.encode(), "text/markdown"))
        get("/data.json", self._body(JSON_BODY.encode(), "application/json"))
        get("/report.pdf", self._body(PDF, "application/pdf"))
        get("/photo.png", self._body(PNG, "image/png"))
        get("/chain/{n}", self._chain)
        get("/go", self._go)
        get("/loop", self._loop)
        get("/slow", self._slow)
        get("/drip", self._drip)
        get("/huge", self._huge)
        get("/gzipped", self._gzipped)
        get("/missing", self._status(404))
        get("/broken", self._status(500))
        self._runner, self.port = await serve_locally(app)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.visits.append(Visit(request.path_qs, dict(request.headers)))
        return await handler(request)

    def _html(self, text: str) -> Handler:
        return self._body(text.encode(), "text/html; charset=utf-8")

    @staticmethod
    def _body(body: bytes, content_type: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type})

        return handler

    @staticmethod
    def _status(status: int) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=status, text="no")

        return handler

    async def _gzipped(self, request: web.Request) -> web.Response:
        """Compressed although the client asked for identity, as some servers do."""
        headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
        return web.Response(body=gzip.compress(PLAIN.encode() * 1000), headers=headers)

    async def _chain(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        location = f"/chain/{n - 1}" if n > 1 else "/article"
        return web.Response(status=302, headers={"Location": location})

    async def _go(self, request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": request.query["to"]})

    async def _loop(self, request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/loop"})

    async def _slow(self, request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), self.slow_seconds)
        return web.Response(text="finally", content_type="text/plain")

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not self._release.is_set():
                await response.write(b".")
                await asyncio.sleep(0.2)
        return response

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        line = b"All work and no play makes a very long page. " * 20 + b"\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(50_000):  # ~46 MB, unless the client stops reading first
                await response.write(line)
        return response
