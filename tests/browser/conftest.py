"""Browser tests of the chat page (adapters/web_static/) in a real headless Chromium.

The tests see the server only through three fixtures:

- `web_base_url`: the base URL of a server that serves the page at `/`, the folder at
  `/static/` and the web API (`/api/conversations/{cid}/messages` and friends);
- `set_next_answer(text)`: the bot's next answer, streamed slowly enough to be seen arriving
  in pieces; without it the answer is `echo: <the user's text>`;
- `page`: a fresh Playwright page (its own localStorage) on that Chromium, with `browser_log`
  recording dialogs and console messages; an uncaught exception in the page fails the test.
  Chromium is /usr/bin/chromium (Debian's package); without it the tests skip.

Until the real adapter exists, `web_app` below is a stand-in that implements the API contract
with an in-memory history. To test the real app instead, rewrite `web_app` only, e.g.:

    @pytest.fixture
    async def web_app(settings, secrets, fake_openai) -> AsyncIterator[WebApp]:
        app = <build the bot's aiohttp app with the web adapter, local mode, from
               settings and secrets>
        runner, port = await serve_locally(app)
        try:
            yield WebApp(
                f"http://127.0.0.1:{port}/",
                lambda text: fake_openai.push(Reply(text=text, tokens_per_second=12)),
            )
        finally:
            await runner.cleanup()

(`serve_locally` from tests/fakes/common.py, `Reply` from tests/fakes/openai_server.py; the
fake OpenAI's default answer is also `echo: <text>`.) Then delete the stand-in.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.common import serve_locally

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
WEB_STATIC = ROOT / "adapters" / "web_static"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass
class WebApp:
    """A running server for the page: where it is, and how to choose the bot's next answer."""

    base_url: str
    set_next_answer: Callable[[str], None]


# ---- the stand-in server ----------------------------------------------------------------

CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PIECE_DELAY = 0.12  # seconds between two deltas


class StandIn:
    """The web API's contract with canned answers streamed a word at a time."""

    def __init__(self) -> None:
        self.answers: deque[str] = deque()
        self.history: dict[str, list[dict[str, str]]] = {}
        self.answered: dict[tuple[str, str], str] = {}  # (cid, message id) -> answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", WEB_STATIC)
        app.router.add_get("/api/conversations/{cid}/messages", self._messages)
        app.router.add_post("/api/conversations/{cid}/messages", self._send)
        app.router.add_delete("/api/conversations/{cid}", self._forget)
        return app

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_STATIC / "index.html")

    @staticmethod
    def _cid(request: web.Request) -> str:
        cid = request.match_info["cid"]
        if not CONVERSATION_ID.fullmatch(cid):
            raise web.HTTPBadRequest(text='{"error": "bad conversation id"}')
        return cid

    async def _messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.history.get(self._cid(request), [])})

    async def _forget(self, request: web.Request) -> web.Response:
        cid = self._cid(request)
        self.history.pop(cid, None)
        self.answered = {key: text for key, text in self.answered.items() if key[0] != cid}
        return web.Response(status=204)

    async def _send(self, request: web.Request) -> web.StreamResponse:
        cid = self._cid(request)
        body: Any = await request.json()
        text, message_id = body.get("text"), body.get("id")
        if not isinstance(text, str) or not text.strip() or not isinstance(message_id, str):
            raise web.HTTPBadRequest(text='{"error": "text and id are required"}')
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        known = self.answered.get((cid, message_id))
        if known is not None:  # a retry: answered once, the same answer again
            await _event(response, "done", known)
            return response
        answer = self.answers.popleft() if self.answers else f"echo: {text}"
        history = self.history.setdefault(cid, [])
        history.append({"role": "user", "text": text})
        for piece in re.findall(r"\S+\s*|\s+", answer):
            await asyncio.sleep(PIECE_DELAY)
            await _event(response, "delta", piece)
        history.append({"role": "assistant", "text": answer})
        self.answered[(cid, message_id)] = answer
        await _event(response, "done", answer)
        return response


async def _event(response: web.StreamResponse, name: str, text: str) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps({'text': text})}\n\n".encode())


@pytest.fixture
async def web_app() -> AsyncIterator[WebApp]:
    stand_in = StandIn()
    runner, port = await serve_locally(stand_in.app())
    try:
        yield WebApp(f"http://127.0.0.1:{port}/", stand_in.answers.append)
    finally:
        await runner.cleanup()


# ---- what the tests use -----------------------------------------------------------------


@pytest.fixture
def web_base_url(web_app: WebApp) -> str:
    return web_app.base_url


@pytest.fixture
def set_next_answer(web_app: WebApp) -> Callable[[str], None]:
    return web_app.set_next_answer


@dataclass
class BrowserLog:
    dialogs: list[str] = field(default_factory=list)  # "type: message"
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest.fixture
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}; apt-get install chromium")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=args)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(
    request: pytest.FixtureRequest, browser: Any, browser_log: BrowserLog
) -> AsyncIterator[Any]:
    """Indirect parameters, if any, are extra options of the browser context."""
    options = getattr(request, "param", {})
    context = await browser.new_context(viewport={"width": 1100, "height": 760}, **options)
    context.set_default_timeout(10_000)
    page = await context.new_page()

    async def on_dialog(dialog: Any) -> None:
        browser_log.dialogs.append(f"{dialog.type}: {dialog.message}")
        await (dialog.accept() if dialog.type == "confirm" else dialog.dismiss())

    page.on("dialog", on_dialog)
    page.on("console", lambda message: browser_log.console.append(message.text))
    page.on("pageerror", lambda error: browser_log.page_errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert not browser_log.page_errors, f"uncaught errors in the page: {browser_log.page_errors}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
