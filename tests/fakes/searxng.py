"""A local search provider on 127.0.0.1 port 0, speaking two real APIs.

SearXNG: `GET /search?q=...&format=json` -> `{query, number_of_results, results: [{url,
title, content, engine, ...}], answers, suggestions, ...}`; 403 when `format` is not json
(as SearXNG answers when its settings leave the JSON format out).
Brave Search: `GET /res/v1/web/search?q=...&count=N` with `X-Subscription-Token` -> `{type,
query: {original}, web: {type, results: [{title, url, description, ...}]}}`; 401 without
the right token. Descriptions carry `<strong>` marks and entities, as Brave's do.

Results are canned per query (`results[query]`), else a generic three; `down = True` makes
both answer 503, `json_format = False` SearXNG 403. Every request is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.common import serve_locally

DEFAULT = [
    ("Example Domain", "https://example.org/", "This domain is for use in examples."),
    ("Examples - Wikipedia", "https://en.wikipedia.org/wiki/Example", "An example is ..."),
    ("More examples", "https://example.net/more", "Yet another example page."),
]


@dataclass
class SearchHit:
    """One request the fake received."""

    api: str  # "searxng" | "brave"
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeSearch:
    """Start with `async with FakeSearch() as search:`; `search.url` is the base URL."""

    token: str = "brave-test-token"
    results: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    down: bool = False
    json_format: bool = True  # False: an instance whose settings.yml leaves `json` out
    hits: list[SearchHit] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeSearch:
        app = web.Application()
        app.router.add_get("/search", self._searxng)
        app.router.add_get("/res/v1/web/search", self._brave)
        self._runner, self.port = await serve_locally(app)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _canned(self, query: str) -> list[tuple[str, str, str]]:
        return self.results.get(query, DEFAULT)

    def _record(self, api: str, request: web.Request) -> None:
        self.hits.append(SearchHit(api, dict(request.query), dict(request.headers)))

    async def _searxng(self, request: web.Request) -> web.Response:
        self._record("searxng", request)
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        if request.query.get("format") != "json" or not self.json_format:
            return web.Response(status=403, text="Forbidden")
        query = request.query.get("q", "")
        results: list[dict[str, Any]] = [
            {
                "url": url,
                "title": title,
                "content": content,
                "engine": "duckduckgo",
                "engines": ["duckduckgo"],
                "score": 1.0,
                "category": "general",
            }
            for title, url, content in self._canned(query)
        ]
        return web.json_response(
            {
                "query": query,
                "number_of_results": len(results),
                "results": results,
                "answers": [],
                "corrections": [],
                "infoboxes": [],
                "suggestions": [],
                "unresponsive_engines": [],
            }
        )

    async def _brave(self, request: web.Request) -> web.Response:
        self._record("brave", request)
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        if request.headers.get("X-Subscription-Token") != self.token:
            error = {"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID"}}
            return web.json_response(error, status=401)
        query = request.query.get("q", "")
        count = int(request.query.get("count", "20"))
        results = [
            {
                "title": title,
                "url": url,
                "description": f"<strong>{query}</strong>: {content} &amp; more",
                "type": "search_result",
                "language": "en",
            }
            for title, url, content in self._canned(query)[:count]
        ]
        return web.json_response(
            {
                "type": "search",
                "query": {"original": query},
                "web": {"type": "search", "results": results},
            }
        )
