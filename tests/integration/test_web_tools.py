"""Reading the web: `fetch_url` against a local site (readable text, bounds, refused types
and addresses, redirects checked hop by hop) and `web_search` against a local provider
speaking SearXNG's and Brave's APIs, through the Tool objects and through a Toolbox."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.config import ConfigError
from core.model import ToolCall
from core.sections import FetchSettings, SearchSettings
from core.tools.fetch_url import Page, WebFetcher, fetch_url_tool, readable
from core.tools.toolbox import Tool, Toolbox, ToolContext, ToolError
from core.tools.web_search import (
    BraveProvider,
    SearxngProvider,
    search_config_problem,
    search_provider,
    web_search_tool,
)
from tests.fakes.searxng import FakeSearch
from tests.fakes.web_pages import (
    ARTICLE_SENTENCES,
    BOILERPLATE,
    JSON_BODY,
    MARKDOWN,
    PLAIN,
    TITLE,
    FakeSite,
)
from tests.helpers import user_message

CONTEXT = ToolContext(user_message("read this for me"), "conv")
LOCAL = FetchSettings(allow_private=True)  # the fake site is on 127.0.0.1


@pytest.fixture
async def site() -> AsyncIterator[FakeSite]:
    async with FakeSite() as server:
        yield server


@pytest.fixture
async def search() -> AsyncIterator[FakeSearch]:
    async with FakeSearch() as server:
        yield server


async def fetch(url: str, settings: FetchSettings = LOCAL, **kw: Any) -> dict[str, Any]:
    tool = fetch_url_tool(settings, WebFetcher(settings, **kw) if kw else None)
    result: dict[str, Any] = await tool.run({"url": url}, CONTEXT)
    return result


async def refused(url: str, settings: FetchSettings = LOCAL, **kw: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await fetch(url, settings, **kw)
    return str(caught.value)


async def through_toolbox(tool: Tool, arguments: dict[str, Any]) -> Any:
    toolbox = Toolbox({tool.name: tool}, timeout=1.0)
    return json.loads(await toolbox.run(ToolCall("c1", tool.name, json.dumps(arguments)), CONTEXT))


# fetch_url: what the model gets


async def test_article_text_without_boilerplate(site: FakeSite):
    result = await fetch(site.url("/article"))
    assert result["url"] == site.url("/article")
    assert result["title"] == TITLE
    for sentence in ARTICLE_SENTENCES:
        assert sentence in result["text"]
    for junk in BOILERPLATE:
        assert junk not in result["text"]
    assert "note" not in result
    agent = site.visits[0].headers["User-Agent"]
    assert agent.startswith("chatbot/") and "fetch_url" in agent


async def test_text_cut_at_max_chars_with_a_note(site: FakeSite):
    result = await fetch(site.url("/long"), FetchSettings(allow_private=True, max_chars=500))
    assert len(result["text"]) == 500
    assert result["text"].startswith(TITLE)
    assert "cut at 500 of its" in result["note"]


@pytest.mark.parametrize(
    ("path", "body"), [("/plain", PLAIN), ("/notes.md", MARKDOWN), ("/data.json", JSON_BODY)]
)
async def test_text_types_pass_as_they_are(site: FakeSite, path: str, body: str):
    result = await fetch(site.url(path))
    assert result == {"url": site.url(path), "title": None, "text": body}


@pytest.mark.parametrize(
    ("path", "kind"), [("/report.pdf", "application/pdf"), ("/photo.png", "image/png")]
)
async def test_files_are_refused(site: FakeSite, path: str, kind: str):
    message = await refused(site.url(path))
    assert kind in message and "PDFs" in message


async def test_untyped_bodies_are_sniffed():
    html = Page("http://x/", "", None, b"<!DOCTYPE html><html><title>T</title><p>hello</p></html>")
    assert (await readable(html, 100, 1000))["text"] == "hello"
    text = Page("http://x/", "", None, "plain words, ünïcode".encode())
    assert (await readable(text, 100, 1000))["text"] == "plain words, ünïcode"
    with pytest.raises(ToolError, match="binary data"):
        await readable(Page("http://x/", "", None, b"\x00\x01\xff\xfe" * 10), 100, 1000)


async def test_a_page_with_no_text_says_so():
    page = Page("http://x/", "text/html", "utf-8", b"<html><body><script>app()</script></body>")
    result = await readable(page, 100, 1000)
    assert result["text"] == "" and "JavaScript" in result["note"]


# fetch_url: redirects, errors, bounds


async def test_redirects_followed_up_to_five(site: FakeSite):
    result = await fetch(site.url("/chain/5"))
    assert result["url"] == site.url("/article") and result["title"] == TITLE
    assert "more than 5 redirects" in await refused(site.url("/chain/6"))
    assert "more than 5 redirects" in await refused(site.url("/loop"))
    assert site.paths().count("/loop") == 6  # the first request and five redirects, then stop


@pytest.mark.parametrize(("path", "status"), [("/missing", "404"), ("/broken", "500")])
async def test_http_errors(site: FakeSite, path: str, status: str):
    assert f"HTTP {status}" in await refused(site.url(path))


@pytest.mark.parametrize(
    "url", ["ftp://example.org/file", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)"]
)
async def test_only_http_and_https(url: str):
    assert "only http and https" in await refused(url)


async def test_bad_arguments():
    tool = fetch_url_tool(LOCAL)
    for arguments in ({}, {"url": ""}, {"url": 42}):
        with pytest.raises(ToolError, match="`url`"):
            await tool.run(arguments, CONTEXT)
    assert "has no host" in await refused("http:///etc/passwd")
    assert "only http and https" in await refused("example.org/page")


async def test_unknown_host(site: FakeSite):
    for url in ("http://no-such-host.invalid/", "http://exa mple.org/"):
        assert "cannot reach the site" in await refused(url)


async def test_slow_page_bounded_by_the_timeout(site: FakeSite):
    start = time.monotonic()
    message = await refused(site.url("/slow"), FetchSettings(allow_private=True, timeout=0.5))
    assert "did not answer within 0.5 seconds" in message
    assert time.monotonic() - start < 2


async def test_a_page_that_never_ends_is_bounded_by_the_whole_timeout(site: FakeSite):
    """Every read is quick (a byte each 0.2 s), so only a bound on the whole fetch stops it."""
    start = time.monotonic()
    message = await refused(site.url("/drip"), FetchSettings(allow_private=True, timeout=0.8))
    assert "did not answer within 0.8 seconds" in message
    assert time.monotonic() - start < 2.5


async def test_huge_page_read_up_to_max_bytes(site: FakeSite):
    start = time.monotonic()
    result = await fetch(site.url("/huge"), FetchSettings(allow_private=True, max_bytes=100_000))
    assert "larger than 100000 bytes" in result["note"]
    assert 0 < len(result["text"]) <= 100_000
    assert time.monotonic() - start < 5


async def test_compressed_anyway_is_read_within_max_bytes(site: FakeSite):
    result = await fetch(site.url("/gzipped"), FetchSettings(allow_private=True, max_chars=10**5))
    assert result["text"] == PLAIN * 1000 and "note" not in result
    assert site.visits[0].headers["Accept-Encoding"] == "identity"
    small = await fetch(site.url("/gzipped"), FetchSettings(allow_private=True, max_bytes=1000))
    assert small["text"] == (PLAIN * 1000)[:1000] and "larger than 1000 bytes" in small["note"]


# fetch_url: never the bot's own network


async def test_loopback_private_and_metadata_refused(site: FakeSite):
    closed = FetchSettings()  # allow_private: false
    urls = [
        site.url("/article"),  # 127.0.0.1
        site.url("/article", host="localhost"),  # a name that resolves to loopback
        site.url("/article", host="[::1]"),
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/admin",
        "http://0.0.0.0:80/",
    ]
    for url in urls:
        start = time.monotonic()
        assert "not on the public internet" in await refused(url, closed)
        assert time.monotonic() - start < 1, url  # refused before connecting, not timed out
    assert site.visits == []


class FakeDNS:
    """Names for the test: `site.test` is the fake site (trusted, as an operator's intranet
    host would be); the others resolve to addresses that must be refused."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        table = {
            "site.test": ["127.0.0.1"],
            "evil.test": ["127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "intranet.test": ["10.20.30.40"],
        }
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]


async def test_every_redirect_hop_is_checked(site: FakeSite):
    """An allowed site redirecting to a private address: refused at that hop, at connect
    time, whatever name the hop uses."""
    closed = FetchSettings()
    dns = FakeDNS()
    kw: dict[str, Any] = {"resolve": dns, "trusted": ["site.test"]}
    home = site.url("/chain/2", host="site.test")
    assert (await fetch(home, closed, **kw))["url"] == site.url("/article", host="site.test")

    for target in (
        site.url("/article"),  # 127.0.0.1 itself
        site.url("/article", host="evil.test"),  # a name resolving to loopback
        "http://metadata.test/latest/meta-data/",  # a name resolving to 169.254.169.254
        "http://169.254.169.254/latest/meta-data/",
        "http://intranet.test/",
    ):
        site.visits.clear()
        hop = site.url(f"/go?to={target}", host="site.test")
        assert "not on the public internet" in await refused(hop, closed, **kw)
        assert [visit.path for visit in site.visits] == [f"/go?to={target}"]  # never reached
    assert {"evil.test", "metadata.test", "intranet.test"} <= set(dns.asked)


async def test_fetch_url_through_a_toolbox(site: FakeSite):
    tool = fetch_url_tool(FetchSettings(allow_private=True, max_chars=2000))
    assert tool.timeout and tool.timeout > 1.0  # its own bound, not the toolbox's 1 s
    result = await through_toolbox(tool, {"url": site.url("/article")})
    assert result["title"] == TITLE and ARTICLE_SENTENCES[0] in result["text"]
    assert await through_toolbox(tool, {"url": site.url("/report.pdf")}) == {
        "error": await refused(site.url("/report.pdf"))
    }
    closed = fetch_url_tool(FetchSettings())
    error = (await through_toolbox(closed, {"url": site.url("/article")}))["error"]
    assert "not on the public internet" in error


# web_search


def brave_env(search: FakeSearch, key: str | None = None) -> dict[str, str]:
    return {"BRAVE_API_KEY": key or search.token, "BRAVE_API_URL": search.url}


async def test_searxng_results(search: FakeSearch):
    search.results["oslo tides"] = [
        ("Tides of Oslo", "https://harbour.example/tides", "The fjord rose by 12 cm."),
        ("Oslo port", "https://port.example/", "Port authority news."),
        ("Weather", "https://weather.example/oslo", "Wind from the north."),
    ]
    settings = SearchSettings(provider="searxng", url=search.url + "/", max_results=2)
    tool = web_search_tool(settings, search_provider(settings, {}))
    result = await tool.run({"query": "  oslo   tides "}, CONTEXT)
    assert result == {
        "query": "oslo tides",
        "results": [
            {
                "title": "Tides of Oslo",
                "url": "https://harbour.example/tides",
                "snippet": "The fjord rose by 12 cm.",
            },
            {
                "title": "Oslo port",
                "url": "https://port.example/",
                "snippet": "Port authority news.",
            },
        ],
    }
    (hit,) = search.hits
    assert hit.api == "searxng" and hit.query == {"q": "oslo tides", "format": "json"}


async def test_brave_results(search: FakeSearch):
    settings = SearchSettings(provider="brave", max_results=3)
    provider = search_provider(settings, brave_env(search))
    assert isinstance(provider, BraveProvider)
    result = await web_search_tool(settings, provider).run({"query": "examples"}, CONTEXT)
    assert [r["url"] for r in result["results"]] == [
        "https://example.org/",
        "https://en.wikipedia.org/wiki/Example",
        "https://example.net/more",
    ]
    # Brave's <strong> marks and entities become plain text
    assert result["results"][0]["snippet"] == "examples: This domain is for use in examples. & more"
    (hit,) = search.hits
    assert hit.api == "brave" and hit.query == {"q": "examples", "count": "3"}
    assert hit.headers["X-Subscription-Token"] == search.token


async def test_brave_wrong_key(search: FakeSearch):
    settings = SearchSettings(provider="brave")
    tool = web_search_tool(settings, search_provider(settings, brave_env(search, "wrong")))
    with pytest.raises(ToolError, match="refused the API key"):
        await tool.run({"query": "x"}, CONTEXT)


async def test_searxng_without_json_format(search: FakeSearch):
    search.json_format = False
    tool = web_search_tool(SearchSettings(url=search.url), SearxngProvider(search.url))
    with pytest.raises(ToolError, match=r"settings\.yml"):
        await tool.run({"query": "x"}, CONTEXT)


async def test_provider_down_or_unreachable(search: FakeSearch):
    search.down = True
    for provider in (SearxngProvider(search.url), BraveProvider(search.token, base_url=search.url)):
        tool = web_search_tool(SearchSettings(url=search.url), provider)
        with pytest.raises(ToolError, match="HTTP 503"):
            await tool.run({"query": "x"}, CONTEXT)
    gone = SearxngProvider("http://127.0.0.1:9")  # the discard port: nothing listens
    error = await through_toolbox(web_search_tool(SearchSettings(), gone), {"query": "x"})
    assert "unreachable" in error["error"]


async def test_web_search_through_a_toolbox(search: FakeSearch):
    settings = SearchSettings(url=search.url, max_results=1)
    tool = web_search_tool(settings, search_provider(settings, {}))
    result = await through_toolbox(tool, {"query": "examples"})
    assert result["results"] == [
        {
            "title": "Example Domain",
            "url": "https://example.org/",
            "snippet": "This domain is for use in examples.",
        }
    ]
    assert "`query`" in (await through_toolbox(tool, {}))["error"]


def test_missing_search_config_is_named():
    problem = search_config_problem(SearchSettings(provider="searxng"), {})
    assert problem and problem.startswith("tools.search.url:")
    assert "tools.search.url" in str(search_config_problem(SearchSettings(url="localhost"), {}))
    problem = search_config_problem(SearchSettings(provider="brave"), {})
    assert problem and "BRAVE_API_KEY" in problem and "tools.search.provider" in problem
    assert search_config_problem(SearchSettings(provider="brave"), {"BRAVE_API_KEY": "k"}) is None
    assert search_config_problem(SearchSettings(url="http://searx:8080"), {}) is None
    with pytest.raises(ConfigError, match=r"tools\.search\.url"):
        search_provider(SearchSettings(), {})
