"""A compressed event stream: the client accepts gzip, and a compressing proxy or server in
front of an OpenAI-compatible model (nginx `gzip_types text/event-stream`, some gateways)
answers with it; the raw bytes then hold no `data:` line, so the stream is decoded first."""

from __future__ import annotations

import json

from aiohttp import web

from core.config import LLMSettings
from core.llm.openai_chat import OpenAIChat, make_client
from tests.fakes.common import serve_locally


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _compressed_sse(request: web.Request) -> web.StreamResponse:
    await request.read()
    seen = request.headers.get("Accept-Encoding", "")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    if "gzip" in seen:
        response.enable_compression(web.ContentCoding.gzip)
    await response.prepare(request)
    for word in ("Hello", " there"):
        choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        chunk["choices"] = [choice]
        await response.write(_event(chunk))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def test_a_gzip_encoded_stream_is_decoded():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _compressed_sse)
    runner, port = await serve_locally(app)
    settings = LLMSettings(chunk_timeout=5, max_retries=0)
    client = make_client(settings, api_key=None, base_url=f"http://127.0.0.1:{port}/v1")
    try:
        llm = OpenAIChat(client, settings)
        events = [e async for e in llm.stream([], model=settings.model)]
    finally:
        await client.close()
        await runner.cleanup()
    assert "".join(e for e in events if isinstance(e, str)) == "Hello there"
