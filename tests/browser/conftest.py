"""Browser tests of the chat page (adapters/web_static/) in a real headless Chromium.

The tests see the server only through three fixtures:

- `web_base_url`: the base URL of a server that serves the page at `/`, the folder at
  `/static/` and the web API (`/api/conversations/{cid}/messages` and friends);
- `set_next_answer(text)`: the bot's next answer, streamed slowly enough to be seen arriving
  in pieces; without it the answer is `echo: <the user's text>`;
- `page`: a fresh Playwright page (its own localStorage) on that Chromium, with `browser_log`
  recording dialogs and console messages; an uncaught exception in the page fails the test.
  Chromium is /usr/bin/chromium (Debian's package); without it the tests skip.

`web_app` is the bot itself: the web adapter in local mode over the real core, the test
Redis and the fake OpenAI server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.config import Secrets, Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.web_channel import running_web

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
WEB_STATIC = ROOT / "adapters" / "web_static"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass
class WebApp:
    """A running server for the page: where it is, and how to choose the bot's next answer."""

    base_url: str
    set_next_answer: Callable[[str], None]


# ---- the real app ------------------------------------------------------------------------


@pytest.fixture
async def web_app(
    settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[WebApp]:
    """The bot's web adapter in local mode (`chatbot web`: no token) on the test Redis,
    answering with the fake OpenAI server (its default answer: `echo: <text>`)."""
    async with running_web(settings, secrets, redis, jwt_secret=None) as (_, port):
        yield WebApp(
            f"http://127.0.0.1:{port}/",
            lambda text: fake_openai.push(Reply(text=text, tokens_per_second=12)),
        )


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
