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

A message's content may be a list of parts (text, and images as `data:image/...;base64,`
URLs); an image part that is not a real PNG, JPEG, GIF or WebP is refused with a 400
invalid_request_error, as by the API. The media endpoints answer as gpt-image-1 and the
audio models do: `/v1/images/generations` a real PNG in `b64_json` (or only a `url`, as dall-e
by default), `/v1/audio/transcriptions` the multipart upload's configured transcript
(`transcripts[bytes]`), refusing a missing file or an extension the model does not read,
`/v1/audio/speech` an Ogg Opus stream (`OggS...`). Each has its own queue of replies (errors,
stalls): `push_images`, `push_transcriptions`, `push_speech`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import io
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from tests.fakes.common import serve_locally

Kind = Literal["stream", "error", "stall", "cut", "stream_error", "endless"]
ENDLESS_BOUND = 2_000_000  # characters: an "endless" answer stops here if nobody hangs up
MAX_BODY = 64 * 1024 * 1024  # the API takes 25 MB audio and 20 MB images (aiohttp's default: 1 MiB)
IMAGE_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}  # what vision models read
IMAGE_SIZES = {"auto", "256x256", "512x512", "1024x1024", "1536x1024", "1024x1536",
               "1792x1024", "1024x1792"}  # fmt: skip
# By the file name's extension; gpt-4o-*-transcribe refuse `.oga`, whisper-1 reads it
AUDIO_EXTENSIONS = {"flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "ogg", "wav", "webm"}
WHISPER_EXTENSIONS = AUDIO_EXTENSIONS | {"oga"}
SPEECH_FORMATS = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                  "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}  # fmt: skip
MAX_SPEECH_INPUT = 4096  # characters


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
    """The default answer: echoes the last user text (a content list: its text parts), or
    after tool results, those results. Images are not described: tests read the request."""
    messages = body.get("messages", [])
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, str(message.get("content", "")))
    if results:
        return "tools said: " + " | ".join(results)
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {text_of(last)}"


def text_of(content: Any) -> str:
    """A message's text: the content itself, or its text parts joined by spaces."""
    if not isinstance(content, list):
        return str(content if content is not None else "")
    return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request, as received."""

    filename: str
    content_type: str
    data: bytes


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

    @property
    def images(self) -> list[bytes]:
        """The decoded images of the last user message (empty when it is text only)."""
        last: dict[str, Any] = next(
            (m for m in reversed(self.messages) if m.get("role") == "user"), {}
        )
        content = last.get("content")
        if not isinstance(content, list):
            return []
        found = []
        for part in content:
            if part.get("type") == "image_url":
                url = str(part.get("image_url", {}).get("url", ""))
                found.append(base64.b64decode(url.partition(",")[2]))
        return found

    @property
    def upload(self) -> Upload | None:
        """A transcription request's file part."""
        file = self.body.get("file")
        return file if isinstance(file, Upload) else None


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
        self.image_queue: deque[Reply] = deque()
        self.transcription_queue: deque[Reply] = deque()
        self.speech_queue: deque[Reply] = deque()
        self.image_colour: tuple[int, int, int] = (40, 120, 200)
        self.image_url_only = False  # answer with a URL only, as dall-e does unless asked
        self.transcripts: dict[bytes, str] = {}  # audio bytes -> what was said in them
        self.default_transcript = "hello from a voice note"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self.queue.extend(replies)

    def push_images(self, *replies: Reply) -> None:
        """Queue replies (kind "error" or "stall") for the next image generations."""
        self.image_queue.extend(replies)

    def push_transcriptions(self, *replies: Reply) -> None:
        """Queue replies for the next transcriptions ("error", "stall"; `text`: the
        transcript)."""
        self.transcription_queue.extend(replies)

    def push_speech(self, *replies: Reply) -> None:
        """Queue replies (kind "error" or "stall") for the next speech requests."""
        self.speech_queue.extend(replies)

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/moderations", self._moderations)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/speech", self._speech)
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

    def image_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/images/generations")]

    def transcription_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/audio/transcriptions")]

    def speech_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/audio/speech")]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Recorded(request.path, dict(request.headers), body)
        self.requests.append(record)
        if (refusal := _check_messages(body.get("messages", []))) is not None:
            return refusal
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

    async def _images(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        if (reply := await self._queued(self.image_queue)) is not None:
            return reply
        if not body.get("prompt"):
            return _invalid(
                "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
            )
        if not body.get("model"):
            return _invalid("you must provide a model parameter", "model", None)
        size = body.get("size", "auto")
        if size not in IMAGE_SIZES:
            return _invalid(f"Invalid value: '{size}'.", "size", "invalid_value")
        png = _png(self.image_colour)
        dall_e = str(body["model"]).startswith("dall-e")
        if self.image_url_only or (dall_e and body.get("response_format") != "b64_json"):
            image = {"url": f"https://files.example.invalid/img-{next(self._ids)}.png"}
        else:
            image = {"b64_json": base64.b64encode(png).decode("ascii")}
        prompt_tokens = max(1, len(str(body["prompt"])) // 4)
        return web.json_response(
            {
                "created": int(time.time()),
                "background": "opaque",
                "data": [image] * int(body.get("n") or 1),
                "output_format": "png",
                "quality": "medium",
                "size": "1024x1024" if size == "auto" else size,
                "usage": {
                    "input_tokens": prompt_tokens,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt_tokens},
                    "output_tokens": 1056,
                    "total_tokens": prompt_tokens + 1056,
                },
            }
        )

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            self.requests.append(Recorded(request.path, dict(request.headers), {}))
            return _invalid("Expected multipart/form-data.", None, None)
        form = await request.post()
        body: dict[str, Any] = {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                body[name] = Upload(value.filename, value.content_type, value.file.read())
            else:
                body[name] = value
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        reply = self.transcription_queue.popleft() if self.transcription_queue else None
        if reply is not None and reply.kind != "stream":
            return await self._refuse(reply)
        upload = body.get("file")
        if not isinstance(upload, Upload):
            return _invalid(
                "1 validation error for Request\nbody -> file\n  field required", "file", None
            )
        model = str(body.get("model") or "")
        if not model:
            return _invalid("you must provide a model parameter", "model", None)
        extension = upload.filename.rpartition(".")[2].lower() if "." in upload.filename else ""
        readable = WHISPER_EXTENSIONS if model.startswith("whisper") else AUDIO_EXTENSIONS
        if extension not in readable:
            return _invalid(
                f"Unsupported file format {extension or upload.filename}",
                "file",
                "unsupported_value",
            )
        if not upload.data:
            return _invalid("Audio file might be corrupted or unsupported", "file", "invalid_value")
        text = reply.text if reply is not None and reply.text is not None else None
        text = text if text is not None else self.transcripts.get(upload.data)
        text = text if text is not None else self.default_transcript
        if body.get("response_format") == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        seconds = max(1, len(upload.data) // 4000)
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": seconds}})

    async def _speech(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        if (reply := await self._queued(self.speech_queue)) is not None:
            return reply
        for field_name in ("model", "input", "voice"):
            if not body.get(field_name):
                return _invalid(
                    f"Missing required parameter: '{field_name}'.",
                    field_name,
                    "missing_required_parameter",
                )
        if len(str(body["input"])) > MAX_SPEECH_INPUT:
            return _invalid(
                f"Invalid 'input': string too long. Expected a string with maximum "
                f"length {MAX_SPEECH_INPUT}.",
                "input",
                "string_above_max_length",
            )
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS:
            return _invalid(f"Invalid value: '{fmt}'.", "response_format", "invalid_value")
        data = _ogg_opus() if fmt == "opus" else b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(64)
        return web.Response(body=data, content_type=SPEECH_FORMATS[fmt])

    async def _queued(self, queue: deque[Reply]) -> web.Response | None:
        """The queued error or stall for a media request, if any."""
        if not queue:
            return None
        return await self._refuse(queue.popleft())

    async def _refuse(self, reply: Reply) -> web.Response:
        if reply.kind == "stall":
            await self._release.wait()  # the client's timeout ends it, or the test's end
        return _error(
            Reply(
                "error",
                status=reply.status if reply.status != 200 else 500,
                retry_after=reply.retry_after,
            )
        )

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
                part = arguments[start : start + size]
                fragment = {"index": index, "function": {"arguments": part}}
                await _event(response, _chunk(ident, model, {"tool_calls": [fragment]}))
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


def _chunk(
    ident: str, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(_chars(m.get("content", "")) for m in body.get("messages", [])) // 4 + 1
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


def _chars(content: Any) -> int:
    """What a message's content counts for in the estimated usage (an image: ~85 tokens)."""
    if not isinstance(content, list):
        return len(str(content))
    images = sum(1 for part in content if part.get("type") == "image_url")
    return len(text_of(content)) + 85 * 4 * images


def _check_messages(messages: list[dict[str, Any]]) -> web.Response | None:
    """A 400 as the API's for a content part it would refuse, else None."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for number, part in enumerate(content):
            param = f"messages.[{index}].content.[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    return _invalid(
                        f"Invalid type for '{param}.text'.", f"{param}.text", "invalid_type"
                    )
                continue
            if kind != "image_url":
                return _invalid(
                    f"Invalid value: '{kind}'. Supported values are: 'text' and 'image_url'.",
                    f"{param}.type",
                    "invalid_value",
                )
            if message.get("role") != "user":
                return _invalid(
                    "Image URLs are only allowed for messages with role 'user', "
                    f"but this message with role '{message.get('role')}' contains "
                    "an image URL.",
                    param,
                    "invalid_value",
                )
            url = (
                part.get("image_url", {}).get("url")
                if isinstance(part.get("image_url"), dict)
                else None
            )
            if (refusal := _check_image(str(url or ""), f"{param}.image_url")) is not None:
                return refusal
    return None


def _check_image(url: str, param: str) -> web.Response | None:
    header, comma, encoded = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64") and comma):
        # the real API fetches http(s) URLs; the fake reads only what the bot sends
        return _invalid(
            "Invalid image URL: expected a data:image/...;base64, URL.", param, "invalid_image_url"
        )
    try:
        data = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = image.format
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, SyntaxError):
        kind = None
    if kind in IMAGE_FORMATS and len(data) <= 20 * 1024 * 1024:
        return None
    return _invalid(
        "You uploaded an unsupported image. Please make sure your image is below 20 MB in size "
        "and is of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
        param,
        "invalid_image_format",
    )


def _invalid(message: str, param: str | None, code: str | None) -> web.Response:
    """An invalid_request_error as the API sends it."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return web.json_response({"error": error}, status=400)


@functools.lru_cache(maxsize=16)
def _png(colour: tuple[int, int, int]) -> bytes:
    """A real 64x64 PNG of one colour (the fake's drawings)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


@functools.lru_cache(maxsize=1)
def _ogg_opus() -> bytes:
    """A real Ogg Opus stream (RFC 7845): the OpusHead and OpusTags pages, then an
    end-of-stream page with one empty 20 ms frame (RFC 6716 3.2.1: silence, as DTX)."""
    head = b"OpusHead" + bytes([1, 1]) + (312).to_bytes(2, "little") + (48000).to_bytes(4, "little")
    head += bytes([0, 0, 0])  # output gain 0, channel mapping family 0
    vendor = b"fake-openai"
    tags = b"OpusTags" + len(vendor).to_bytes(4, "little") + vendor + bytes(4)
    silence = bytes([0xF8])  # TOC: CELT-only, 20 ms, mono, one frame (of length 0)
    return (
        _ogg_page(head, sequence=0, granule=0, flags=0x02)
        + _ogg_page(tags, sequence=1, granule=0, flags=0x00)
        + _ogg_page(silence, sequence=2, granule=960 + 312, flags=0x04)
    )


def _ogg_page(payload: bytes, *, sequence: int, granule: int, flags: int) -> bytes:
    """One Ogg page (RFC 3533) with its CRC, for a payload under 255 bytes."""
    header = (
        b"OggS\x00"
        + bytes([flags])
        + granule.to_bytes(8, "little")
        + (0x0F0E).to_bytes(4, "little")  # the stream's serial number
        + sequence.to_bytes(4, "little")
        + bytes(4)  # the CRC, computed over the page with this field zero
        + bytes([1, len(payload)])
    )
    page = header + payload
    return page[:22] + _ogg_crc(page).to_bytes(4, "little") + page[26:]


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


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
