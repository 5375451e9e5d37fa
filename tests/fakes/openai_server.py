"""A local OpenAI-compatible server speaking the real Chat Completions HTTP + SSE protocol.

The bot reaches it through the real `openai` client by `OPENAI_BASE_URL`. Each request takes
the next queued `Reply` (else the default one): a streamed answer (with a time to first token
and a token rate), an HTTP error (429 with Retry-After, 500), a stream that stalls, or one
whose connection is cut. A reply may ask for tool calls (several in one turn; streamed as
the real API does: the id and name first, the JSON arguments in fragments keyed by index)
and a request with `tool_choice: "none"` gets words instead, as from the real API. Usage
chunks are sent when `stream_options.include_usage` asks for them. `/v1/moderations` flags
any input containing one of `flag_words` (or fails with `moderation_status`). Every request
is recorded so tests assert what the model was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes.common import serve_locally

Kind = Literal["stream", "error", "stall", "cut", "stream_error", "endless"]
ENDLESS_BOUND = 2_000_000  # characters: an "endless" answer stops here if nobody hangs up


@dataclass(frozen=True)
class Call:
    """A tool call the fake model asks for."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)  # a str is sent verbatim

    def json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Reply:
    """How the fake answers one request."""

    kind: Kind = "stream"
    text: str | None = None  # None: the default answer for the request
    status: int = 200
    retry_after: float | None = None  # seconds, sent as Retry-After and retry-after-ms
    after_chunks: int = 0  # for stall and cut: content chunks sent before it happens
    ttft: float = 0.0  # seconds before the first content chunk
    tokens_per_second: float = 0.0  # 0: as fast as possible
    words_per_chunk: int = 1
    tool_calls: list[Call] = field(default_factory=list)  # asked for after any text
    usage: dict[str, int] | None = None  # None: estimated from the request and answer
    send_usage: bool = True  # False: like servers that ignore stream_options.include_usage
    ignore_tool_choice: bool = False  # a misbehaving server: tool calls even when told none
    fragment_chars: int = 7  # streamed tool-call arguments come in pieces this long
    keepalive: float = 0.0  # for stall: an SSE comment this often (as some proxies send)


def echo_answer(body: dict[str, Any]) -> str:
    """The default answer: echoes the last user text, or after tool results, those results."""
    messages = body.get("messages", [])
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, str(message.get("content", "")))
    if results:
        return "tools said: " + " | ".join(results)
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {last}"


@dataclass
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    first_token: float = 0.0  # when the first content chunk left
    hung_up_after: int = 0  # "endless": characters sent when the client closed the stream
    done: float = 0.0  # when the whole answer had left

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


class FakeOpenAI:
    """Start with `async with FakeOpenAI() as fake:`; point the bot at `fake.base_url`."""

    def __init__(
        self,
        *,
        default: Reply | None = None,
        answer: Callable[[dict[str, Any]], str] = echo_answer,
    ) -> None:
        self.default = default or Reply()
        self.decide: Callable[[dict[str, Any]], Reply] | None = None  # per-request choice
        self.answer = answer
        self.queue: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._release = asyncio.Event()
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.first_token_at: list[float] = []  # monotonic time each answer's first token left
        self.flag_words: set[str] = {"forbidden-topic"}
        self.moderation_status = 200  # anything else: /v1/moderations fails with it

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self.queue.extend(replies)

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/moderations", self._moderations)
        self._runner, self.port = await serve_locally(app, shutdown_timeout=0.5)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def moderation_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/moderations")]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Recorded(request.path, dict(request.headers), body)
        self.requests.append(record)
        if self.queue:
            reply = self.queue.popleft()
        else:
            reply = self.decide(body) if self.decide is not None else self.default
        if reply.kind == "error":
            return _error(reply)
        calls = reply.tool_calls
        if body.get("tool_choice") == "none" and not reply.ignore_tool_choice:
            calls = []  # the real API answers in words when told not to call tools
        if reply.text is not None and (calls or not reply.tool_calls):
            text = reply.text
        else:
            text = "" if calls else self.answer(body)
        if not body.get("stream"):
            if reply.ttft:
                await asyncio.sleep(reply.ttft)
            return web.json_response(
                _completion(next(self._ids), body, text, calls, self._call_ids, reply.usage)
            )
        return await self._stream(request, body, reply, text, calls, record)

    async def _moderations(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        if self.moderation_status != 200:
            return _error(Reply("error", status=self.moderation_status))
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
        results = [_moderation(text, self.flag_words) for text in texts]
        model = body.get("model", "omni-moderation-latest")
        ident = f"modr-{next(self._ids)}"
        return web.json_response({"id": ident, "model": model, "results": results})

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        reply: Reply,
        text: str,
        calls: list[Call],
        record: Recorded,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident = f"chatcmpl-{next(self._ids)}"
        model = body.get("model", "gpt-test")
        await _event(response, _chunk(ident, model, {"role": "assistant", "content": ""}))
        if reply.ttft:
            await asyncio.sleep(reply.ttft)
        if reply.kind == "endless":
            return await self._endless(response, ident, model, record)
        pieces = _pieces(text, reply.words_per_chunk) if text else []
        delay = 1 / reply.tokens_per_second if reply.tokens_per_second else 0.0
        for index, piece in enumerate(pieces):
            if reply.kind in ("stall", "cut", "stream_error") and index == reply.after_chunks:
                return await self._break(request, response, reply)
            if index == 0:
                record.first_token = time.monotonic()
                self.first_token_at.append(record.first_token)
            elif delay:
                await asyncio.sleep(delay)
            try:
                await _event(response, _chunk(ident, model, {"content": piece}))
            except ConnectionError:
                return response  # the client went away (killed or cancelled)
        if reply.kind in ("stall", "cut", "stream_error"):
            return await self._break(request, response, reply)
        for index, call in enumerate(calls):
            first = {"index": index, "id": f"call_{next(self._call_ids)}", "type": "function"}
            first["function"] = {"name": call.name, "arguments": ""}
            await _event(response, _chunk(ident, model, {"tool_calls": [first]}))
            arguments = call.json()
            size = max(reply.fragment_chars, 1)
            for start in range(0, len(arguments), size):
                piece = {"index": index, "function": {"arguments": arguments[start : start + size]}}
                await _event(response, _chunk(ident, model, {"tool_calls": [piece]}))
        finish = "tool_calls" if calls else "stop"
        await _event(response, _chunk(ident, model, {}, finish=finish))
        if body.get("stream_options", {}).get("include_usage") and reply.send_usage:
            usage = reply.usage or _usage(body, text)
            await _event(response, {**_chunk(ident, model, {}), "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.done = time.monotonic()
        return response

    async def _endless(
        self, response: web.StreamResponse, ident: str, model: str, record: Recorded
    ) -> web.StreamResponse:
        """A model that never stops: words until the client hangs up (or ENDLESS_BOUND)."""
        record.first_token = time.monotonic()
        sent = 0
        try:
            while sent < ENDLESS_BOUND:
                piece = f"word{sent} " * 8
                await _event(response, _chunk(ident, model, {"content": piece}))
                sent += len(piece)
        except ConnectionError:
            record.hung_up_after = sent
        return response

    async def _break(
        self, request: web.Request, response: web.StreamResponse, reply: Reply
    ) -> web.StreamResponse:
        if reply.kind == "stream_error":  # how the API reports a failure after the 200
            error = {"message": "The server had an error while processing your request.",
                     "type": "server_error", "param": None, "code": None}  # fmt: skip
            await _event(response, {"error": error})
            await response.write_eof()
            return response
        if reply.kind == "cut":
            if request.transport is not None:
                request.transport.close()
            return response
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while reply.keepalive:  # bytes keep coming, but no event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), reply.keepalive)
                if self._release.is_set():
                    return response
                await response.write(b": keep-alive\n\n")
            await self._release.wait()  # stall until the test ends
        return response


def _pieces(text: str, words_per_chunk: int) -> list[str]:
    words = text.split(" ")
    pieces = []
    for start in range(0, len(words), max(words_per_chunk, 1)):
        piece = " ".join(words[start : start + words_per_chunk])
        pieces.append(piece if start == 0 else " " + piece)
    return pieces


def _chunk(ident: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
    completion = max(1, len(text) // 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(
    number: int,
    body: dict[str, Any],
    text: str,
    calls: list[Call],
    call_ids: itertools.count[int],
    usage: dict[str, int] | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{next(call_ids)}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.json()},
            }
            for call in calls
        ]
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-test"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": usage or _usage(body, text),
    }


CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def _moderation(text: str, flag_words: set[str]) -> dict[str, Any]:
    """One result shaped as the real endpoint's; a flag word counts as harassment."""
    flagged = any(word.lower() in text.lower() for word in flag_words)
    categories = {name: flagged and name == "harassment" for name in CATEGORIES}
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": {name: 0.97 if hit else 0.0001 for name, hit in categories.items()},
        "category_applied_input_types": {name: ["text"] for name in CATEGORIES},
    }


async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")


def _error(reply: Reply) -> web.Response:
    headers = {}
    if reply.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(reply.retry_after)))
        headers["retry-after-ms"] = str(int(reply.retry_after * 1000))
    code = "rate_limit_exceeded" if reply.status == 429 else "server_error"
    message = (
        "Rate limit reached for requests" if reply.status == 429 else "The server had an error"
    )
    return web.json_response(
        {"error": {"message": message, "type": "requests", "param": None, "code": code}},
        status=reply.status,
        headers=headers,
    )
