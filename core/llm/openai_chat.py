"""The chat model: OpenAI Chat Completions, streamed, through one AsyncOpenAI per process.

Any OpenAI-compatible server works through `OPENAI_BASE_URL` (Ollama, vLLM, llama.cpp).
The SDK retries 429 and 5xx with backoff and honours Retry-After (`max_retries`). The read
timeout applies between chunks, never to the whole answer, and is enforced here too so a
stalled stream ends within `chunk_timeout` whatever the transport does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.config import LLMSettings
from core.llm.idle import IdleTimeout
from core.model import ToolCall, Turn
from core.protocols import Completion, LLMError, LLMEvent, StreamCut, ToolSpec, Usage

log = logging.getLogger(__name__)

NO_KEY_NEEDED = "not-needed"  # local OpenAI-compatible servers ignore the key


class MissingAPIKey(Exception):
    """Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set."""

    def __init__(self) -> None:
        super().__init__(
            "No LLM configured: set OPENAI_API_KEY (for the OpenAI API) or OPENAI_BASE_URL "
            "(for an OpenAI-compatible server such as Ollama, vLLM or llama.cpp)."
        )


def make_client(settings: LLMSettings, *, api_key: str | None, base_url: str | None) -> AsyncOpenAI:
    """The one AsyncOpenAI of the process, with chunk-level timeouts and SDK retries."""
    if not api_key and not base_url:
        raise MissingAPIKey
    from openai import DefaultAioHttpClient, Timeout

    timeout = Timeout(
        connect=settings.connect_timeout,
        read=settings.chunk_timeout,
        write=30.0,
        pool=30.0,
    )
    return AsyncOpenAI(
        api_key=api_key or NO_KEY_NEEDED,
        base_url=base_url or None,
        timeout=timeout,
        max_retries=settings.max_retries,
        # aiohttp under the SDK: httpx's pool costs milliseconds per call under many concurrent
        # streams (measured with `python -m bench`); the SDK documents this transport for that
        http_client=DefaultAioHttpClient(timeout=timeout),
    )


class OpenAIChat:
    """The `LLM` protocol over Chat Completions (streamed answers, whole summaries)."""

    def __init__(
        self,
        client: AsyncOpenAI,
        settings: LLMSettings,
        *,
        on_usage: Callable[[Usage], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._on_usage = on_usage

    def _request(
        self, messages: Sequence[Turn], model: str, tools: Sequence[ToolSpec]
    ) -> dict[str, Any]:
        """The JSON body, already in wire form. It goes out through the SDK's `client.post`
        (its documented way to send a body as is) rather than `chat.completions.create`, whose
        per-call walk over every message's typed fields cost ~2 ms of CPU for a 10-turn history
        (`python -m bench`); retries, errors, auth and chunk parsing stay the SDK's."""
        request: dict[str, Any] = {"model": model, "messages": [_wire(t) for t in messages]}
        if self.settings.temperature is not None:
            request["temperature"] = self.settings.temperature
        if self.settings.max_tokens is not None:
            request["max_completion_tokens"] = self.settings.max_tokens
        if tools:
            request["tools"] = list(tools)
        return request

    async def stream(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        tools: Sequence[ToolSpec] = (),
        tool_choice: str | None = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        """Yield text deltas and the usage as they arrive, then the assembled tool calls.

        Streamed tool calls come as fragments keyed by `index` (the id and name in the first
        one, the JSON arguments spread over the rest); they are joined here and yielded once
        the stream has ended. Raises LLMError or StreamCut on failure.
        """
        request = self._request(messages, model, tools)
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        if tools and tool_choice:
            request["tool_choice"] = tool_choice
        try:
            stream = await self.client.post(
                "/chat/completions", body=request, cast_to=ChatCompletion, stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk],
            )  # fmt: skip
        except Exception as exc:  # APIError after the SDK's retries, or a transport error
            raise LLMError(describe_error(exc)) from None
        response = stream.response
        # The raw bytes are the events only without a Content-Encoding (the client accepts
        # gzip, and a proxy may compress the stream); aiter_bytes undoes one.
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        raw = response.aiter_bytes() if encoded else response.aiter_raw()
        chunks = _sse_payloads(raw).__aiter__()
        calls: dict[int, dict[str, str]] = {}
        try:
            with IdleTimeout(self.settings.chunk_timeout) as idle:
                while True:
                    idle.waiting()
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # a cut connection surfaces as a transport error
                        raise StreamCut(describe_error(exc)) from None
                    finally:
                        idle.done()
                    if chunk.get("error"):  # the server gave up mid-stream
                        raise StreamCut(f"the model reported an error: {_error_text(chunk)}")
                    if chunk.get("usage"):
                        got = chunk["usage"]
                        usage = Usage(
                            got.get("prompt_tokens") or 0, got.get("completion_tokens") or 0
                        )
                        if self._on_usage is not None:
                            self._on_usage(usage)
                        yield usage
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield delta["content"]
                        for fragment in delta.get("tool_calls") or ():
                            _add_fragment(calls, fragment)
        except TimeoutError:
            raise StreamCut(f"no data from the model for {self.settings.chunk_timeout}s") from None
        finally:
            await stream.close()
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["args"] or "{}")

    async def complete(
        self,
        messages: Sequence[Turn],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> Completion:
        """One whole answer (summaries): text, tool calls and usage. Raises LLMError."""
        request = self._request(messages, model, tools)
        if max_tokens is not None:
            request["max_completion_tokens"] = max_tokens
        try:
            response = await self.client.post(
                "/chat/completions", body=request, cast_to=ChatCompletion
            )
        except Exception as exc:
            raise LLMError(describe_error(exc)) from None
        if not response.choices:
            raise LLMError("the model returned no choices")
        message = response.choices[0].message
        calls = tuple(
            ToolCall(call.id, function.name, function.arguments or "{}")
            for call in message.tool_calls or ()
            if (function := getattr(call, "function", None)) is not None  # not a custom tool
        )
        usage = None
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
            if self._on_usage is not None:
                self._on_usage(usage)
        return Completion(message.content or "", calls, usage)


def _wire(turn: Turn) -> dict[str, Any]:
    """A turn as the API's message. A user turn's loaded images go as content parts (data
    URLs, the text part first); an image not loaded (a stored turn's id only) is left out."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.images and turn.role == "user":
        from base64 import b64encode  # only turns with images pay for it

        parts: list[dict[str, Any]] = [
            {
                "type": "image_url",
                "image_url": {
                    "url": f"data:{image.mime_type or 'image/jpeg'};base64,"
                    + b64encode(image.data).decode("ascii")
                },
            }
            for image in turn.images
            if image.data
        ]
        if parts:
            message["content"] = (
                [{"type": "text", "text": turn.content}, *parts] if turn.content else parts
            )
    if turn.name and turn.role == "user":
        message["name"] = _safe_name(turn.name)
    if turn.tool_calls:
        message["content"] = turn.content or None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ]
    if turn.role == "tool":
        message["tool_call_id"] = turn.tool_call_id
    return message


def _add_fragment(calls: dict[int, dict[str, str]], fragment: dict[str, Any]) -> None:
    """Join a streamed tool call's fragment to its call, keyed by `index`."""
    call = calls.setdefault(fragment.get("index", 0), {"id": "", "name": "", "args": ""})
    call["id"] = fragment.get("id") or call["id"]
    function = fragment.get("function") or {}
    call["name"] += function.get("name") or ""
    call["args"] += function.get("arguments") or ""


def _safe_name(name: str) -> str:
    """The API accepts names matching ^[a-zA-Z0-9_-]{1,64}$."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in name)
    return cleaned[:64] or "user"


async def _sse_payloads(raw: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON payload of each server-sent event, until `[DONE]`.

    The SDK opens the stream (auth, retries before the first byte, error statuses) and the
    payloads are read here as plain dicts from the raw bytes: the SDK's own decoder builds a
    typed model per chunk (~0.15 ms of CPU each against ~0.04 ms here), and httpx's text and
    line decoders add four generator hops per chunk (`python -m bench`). JSON is decoded
    from bytes (UTF-8), so a character split between two network reads is whole by then.
    """
    data: list[bytes] = []
    pending = b""
    async for received in raw:
        lines, pending = _split_lines(pending + received)
        for line in lines:
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
                continue
            if line or not data:
                continue  # `event:`, `id:`, comments; or a blank line with nothing pending
            text, data = b"\n".join(data), []
            if text == b"[DONE]":
                return
            if (payload := _json_object(text)) is not None:
                yield payload
    if pending.startswith(b"data:"):  # a last line without its line break
        data.append(pending[5:].rstrip(b"\r").lstrip(b" "))
    text = b"\n".join(data)  # a last event without its blank line
    if text and text != b"[DONE]" and (payload := _json_object(text)) is not None:
        yield payload


def _split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole lines in `buffer` (SSE ends lines with LF, CRLF or CR) and the rest."""
    if b"\r" not in buffer:
        lines = buffer.split(b"\n")
        return lines, lines.pop()
    held = buffer.endswith(b"\r")  # maybe the first half of a CRLF: keep it for the next read
    body = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = body.split(b"\n")
    return lines, lines.pop() + (b"\r" if held else b"")


def _json_object(text: bytes) -> dict[str, Any] | None:
    payload = json.loads(text)
    return payload if isinstance(payload, dict) else None


def _error_text(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "unknown error")[:200]


def describe_error(exc: BaseException) -> str:
    """A loggable description of an API failure: kind and status, never headers or keys."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}"
