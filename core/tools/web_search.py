"""The `web_search` tool: a query to a search provider, a few results (title, URL, snippet)
back to the model, which may then read a page with `fetch_url`.

A provider is anything with `search(query, max_results)`; two speak real APIs: a SearXNG
instance's JSON API (`tools.search.url`, its `json` format enabled) and Brave Search's web
API (the key in `BRAVE_API_KEY`). The provider is one the operator configured, so its
address is not checked the way `fetch_url` checks a page's: a SearXNG on the local network
is the usual setup.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from core.config import ConfigError
from core.sections import SearchSettings
from core.tools.toolbox import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)

BRAVE_API_URL = "https://api.search.brave.com"
USER_AGENT = "chatbot/0.2 (web_search)"
_TAG = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One hit: what the model sees of it."""

    title: str
    url: str
    snippet: str


class SearchError(Exception):
    """The provider failed (down, refused, an answer not in its shape); safe to show a model."""


class SearchProvider(Protocol):
    """A web search engine: the best `max_results` hits for `query`, or SearchError."""

    async def search(self, query: str, max_results: int) -> list[SearchResult]: ...


class SearxngProvider:
    """A SearXNG instance: `GET {url}/search?q=...&format=json`, hits in `results[]` as
    `{title, url, content}`. SearXNG answers 403 when its settings leave out the JSON format."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        params = {"q": query, "format": "json"}
        data = await _get_json(f"{self.url}/search", params, {}, self.timeout, "SearXNG")
        if data.status == 403:
            raise SearchError(
                "the search provider answered HTTP 403 (SearXNG: is `json` among "
                "`search.formats` in its settings.yml?)"
            )
        if data.json is None:
            raise SearchError(f"the search provider answered HTTP {data.status}")
        items = data.json.get("results") if isinstance(data.json, dict) else None
        return _results(items, "content", max_results, "SearXNG")


class BraveProvider:
    """Brave Search's web API: `GET {base}/res/v1/web/search?q=...&count=N` with the key in
    `X-Subscription-Token`, hits in `web.results[]` as `{title, url, description}`."""

    def __init__(self, api_key: str, *, base_url: str = BRAVE_API_URL, timeout: float = 10.0):
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        params = {"q": query, "count": str(min(max_results, 20))}
        headers = {"X-Subscription-Token": self._key, "Accept": "application/json"}
        url = f"{self.base_url}/res/v1/web/search"
        data = await _get_json(url, params, headers, self.timeout, "Brave")
        if data.status in (401, 403, 422):
            raise SearchError(f"the search provider refused the API key (HTTP {data.status})")
        web = data.json.get("web") if isinstance(data.json, dict) else None
        items = web.get("results", []) if isinstance(web, dict) else []
        return _results(items, "description", max_results, "Brave")


def search_config_problem(settings: SearchSettings, env: Mapping[str, str]) -> str | None:
    """What keeps `web_search` from working with these settings, worded for the operator (it
    names the key), or None; checked at start, so a missing key stops the bot there."""
    if settings.provider == "searxng":
        if not settings.url:
            return (
                "tools.search.url: web_search with provider searxng needs the SearXNG "
                "instance's base URL (e.g. http://localhost:8888, its `json` format enabled)"
            )
        if not settings.url.startswith(("http://", "https://")):
            return f"tools.search.url: {settings.url!r} is not an http or https URL"
        return None
    if not env.get("BRAVE_API_KEY"):
        return (
            "tools.search.provider is brave, which needs the API key in the environment "
            "variable BRAVE_API_KEY (https://api-dashboard.search.brave.com)"
        )
    return None


def search_provider(settings: SearchSettings, env: Mapping[str, str]) -> SearchProvider:
    """The configured provider; ConfigError (see `search_config_problem`) when it cannot work.
    Brave's key comes from `BRAVE_API_KEY`, its base URL from `BRAVE_API_URL` (tests)."""
    problem = search_config_problem(settings, env)
    if problem:
        raise ConfigError(problem)
    if settings.provider == "searxng":
        assert settings.url is not None, "checked above"
        return SearxngProvider(settings.url, timeout=settings.timeout)
    base_url = env.get("BRAVE_API_URL") or BRAVE_API_URL
    return BraveProvider(env["BRAVE_API_KEY"], base_url=base_url, timeout=settings.timeout)


def web_search_tool(settings: SearchSettings, provider: SearchProvider) -> Tool:
    """The `web_search` tool: `{query}` -> `{query, results: [{title, url, snippet}]}`."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("give what to search for as `query`")
        query = " ".join(query.split())
        try:
            found = await provider.search(query, settings.max_results)
        except SearchError as exc:
            raise ToolError(str(exc)) from None
        log.info("web_search: %d results", len(found))
        results = [
            {"title": hit.title, "url": hit.url, "snippet": hit.snippet}
            for hit in found[: settings.max_results]
        ]
        return {"query": query, "results": results}

    schema = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "what to search the web for"}},
        "required": ["query"],
    }
    description = (
        f"Search the web: the top {settings.max_results} results (title, URL, snippet). "
        "Read a result's page with fetch_url when the snippet is not enough."
    )
    return Tool("web_search", description, schema, run, settings.timeout + 1.0)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    json: Any


async def _get_json(
    url: str, params: Mapping[str, str], headers: Mapping[str, str], seconds: float, name: str
) -> _Answer:
    """GET and decode; SearchError when unreachable, 5xx, other 4xx than the caller's to
    word (401, 403, 422), or not JSON. One client per search: they are seconds apart."""
    all_headers = {"User-Agent": USER_AGENT, **headers}
    try:
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(timeout=seconds, follow_redirects=False) as client,
        ):
            response = await client.get(url, params=dict(params), headers=all_headers)
    except (TimeoutError, httpx.TimeoutException):
        raise SearchError(f"the search provider did not answer within {seconds:g} s") from None
    except httpx.HTTPError as exc:
        log.warning("web_search: %s unreachable: %s", name, type(exc).__name__)
        raise SearchError(f"the search provider is unreachable ({type(exc).__name__})") from None
    if response.status_code in (401, 403, 422):
        return _Answer(response.status_code, None)
    if response.status_code >= 300:
        log.warning("web_search: %s answered HTTP %d", name, response.status_code)
        raise SearchError(f"the search provider answered HTTP {response.status_code}; try later")
    try:
        return _Answer(response.status_code, response.json())
    except ValueError:
        raise SearchError("the search provider's answer is not JSON") from None


def _results(items: Any, snippet_key: str, limit: int, name: str) -> list[SearchResult]:
    if not isinstance(items, list):
        log.warning("web_search: %s answered without a results list", name)
        raise SearchError("the search provider's answer has no results list")
    results = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        results.append(
            SearchResult(
                title=_plain(item.get("title")),
                url=item["url"],
                snippet=_plain(item.get(snippet_key)),
            )
        )
        if len(results) >= limit:
            break
    return results


def _plain(value: Any) -> str:
    """A provider's text as plain text: Brave marks matches with <strong>, both escape."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(_TAG.sub("", value)).split())
