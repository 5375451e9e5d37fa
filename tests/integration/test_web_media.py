"""Files on the web channel (adapters/web.py, adapters/web_files.py) as a client sees them:
attachments in the POST body and the WebSocket frame reach the handler as `Attachment`s whose
bytes `fetch` returns, bad ones are refused before any turn, and a file the handler sends
comes back as an SSE `file` event, a `file` frame or the JSON answer's `files`.

The real adapter in JWT mode over the real core, the test Redis and the fake OpenAI server,
with a recording handler in front of the core's (`running_web(wrap=...)`)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from adapters.web import WebAdapter
from core.config import Secrets, Settings
from core.model import Attachment, ContextKey, MediaKind, Message, OutgoingFile, User
from core.protocols import FetchError, Handler, MediaResponder, Responder
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_web_api import SECRET, all_events, bearer, json_error
from tests.web_channel import running_web

MAX_BYTES = 1_500_000  # media.max_bytes here: more than aiohttp's default 1 MiB body


def png(width: int = 8, height: int = 6, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def attachment(name: str, mime_type: str, data: bytes) -> dict[str, str]:
    return {"name": name, "mime_type": mime_type, "data": base64.b64encode(data).decode()}


@dataclass
class Recorder:
    """A handler in front of the core's: records each message, what `fetch` gave for each
    attachment, and the responder; sends `to_send` before the core answers."""

    messages: list[Message] = field(default_factory=list)
    fetched: list[bytes | FetchError] = field(default_factory=list)
    responders: list[Responder] = field(default_factory=list)
    to_send: list[OutgoingFile] = field(default_factory=list)

    def wrap(self, core: Handler) -> Handler:
        async def handler(message: Message, responder: Responder) -> None:
            self.messages.append(message)
            self.responders.append(responder)
            if isinstance(responder, MediaResponder):
                for item in message.attachments:
                    try:
                        self.fetched.append(await responder.fetch(item, MAX_BYTES))
                    except FetchError as exc:
                        self.fetched.append(exc)
                for file in self.to_send:
                    await responder.send_file(file)
            await core(message, responder)

        return handler


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    fake: FakeOpenAI
    recorder: Recorder
    adapter: WebAdapter

    def url(self, cid: str = "c1") -> str:
        return f"{self.base}/api/conversations/{cid}/messages"

    def post(self, body: Any, *, sse: bool = False) -> Any:
        headers = {**bearer(), "Content-Type": "application/json"}
        if sse:
            headers["Accept"] = "text/event-stream"
        data = io.BytesIO(json.dumps(body).encode())  # megabytes: not as one bytes body
        return self.session.post(self.url(), data=data, headers=headers)

    async def socket(self) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(f"{self.base}/api/ws", headers=bearer())


@pytest.fixture
def media_settings(key_prefix: str, tmp_path: Path) -> Settings:
    return make_settings(key_prefix, tmp_path, media={"max_bytes": MAX_BYTES})


@pytest.fixture
async def api(
    media_settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[Api]:
    recorder = Recorder()
    web = running_web(media_settings, secrets, redis, jwt_secret=SECRET, wrap=recorder.wrap)
    async with web as (adapter, port), aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{port}", session, fake_openai, recorder, adapter)


async def frames_until_done(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(await ws.receive_json(timeout=10))
    return frames


# ---- files in ------------------------------------------------------------------------------


async def test_attachments_reach_the_handler_and_fetch_gives_their_exact_bytes(api: Api) -> None:
    picture, code = png(), b"print('hello')\n"
    body: dict[str, Any] = {
        "text": "what is in these?",
        "id": "m1",
        "attachments": [
            attachment("cat.png", "image/png", picture),
            attachment("dir/notes.py", "", code),  # browsers give no type for many files
        ],
    }
    async with api.post(body) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()

    [message] = api.recorder.messages
    assert message.text == "what is in these?"
    image, doc = message.attachments
    assert (image.name, image.mime_type, image.kind, image.size) == (
        "cat.png", "image/png", MediaKind.IMAGE, len(picture)
    )  # fmt: skip
    assert (doc.name, doc.kind, doc.size) == ("notes.py", MediaKind.DOCUMENT, len(code))
    assert doc.mime_type.startswith("text/")
    assert image.handle and doc.handle and image.handle != doc.handle
    assert api.recorder.fetched == [picture, code]
    # The message (journaled to Redis) carries descriptors only, never the bytes.
    assert body["attachments"][0]["data"][:40] not in repr(message)
    assert "files" not in answer and "cat.png" in answer["text"]  # the core names them
    # The bytes lasted one turn: gone once it is answered.
    responder = api.recorder.responders[0]
    assert isinstance(responder, MediaResponder)
    with pytest.raises(FetchError, match="no longer available"):
        await responder.fetch(image, MAX_BYTES)


async def test_over_a_mebibyte_with_no_text_by_post_and_websocket(api: Api) -> None:
    """Files alone are a message; a file larger than aiohttp's default body bound (1 MiB)
    goes through (the adapter bounds the body itself: max_body plus the files)."""
    big = bytes(range(256)) * (1_200_000 // 256)
    files = [attachment("voice.ogg", "audio/ogg", big)]
    async with api.post({"id": "p1", "attachments": files}) as response:
        assert response.status == 200, await response.text()
    ws = await api.socket()
    await ws.send_json({"type": "message", "conversation": "c1", "id": "w1", "attachments": files})
    frames = await frames_until_done(ws)
    await ws.close()

    assert frames[-1]["type"] == "done", frames
    assert [m.text for m in api.recorder.messages] == ["", ""]
    for message in api.recorder.messages:
        [voice] = message.attachments
        assert (voice.kind, voice.size, voice.mime_type) == (MediaKind.AUDIO, len(big), "audio/ogg")
    assert api.recorder.fetched == [big, big]


async def test_after_a_crash_the_upload_is_gone(api: Api) -> None:
    """`responder_for` (crash recovery) answers a journaled message whose bytes died with
    the process that took it."""
    item = Attachment("a.png", "image/png", "upload-0", 3, MediaKind.IMAGE)
    message = Message("web", ContextKey("web", "c1", "alice", "alice"), User("alice"), "",
                      "m1", attachments=(item,))  # fmt: skip

    responder = api.adapter.responder_for(message)

    assert isinstance(responder, MediaResponder)
    with pytest.raises(FetchError, match="the upload is no longer available"):
        await responder.fetch(item, MAX_BYTES)


BAD = {
    "not base64": ([{"name": "a.png", "mime_type": "image/png", "data": "not base64!"}], 400),
    "too many": ([attachment(f"{i}.png", "image/png", b"x") for i in range(5)], 400),
    "not a list": ({"name": "a.png"}, 400),
    "no data": ([{"name": "a.png", "mime_type": "image/png"}], 400),
    "a bad type": ([attachment("a.png", "image png", b"x")], 400),
    "empty": ([attachment("a.png", "image/png", b"")], 400),
    "too large": ([attachment("a.bin", "application/octet-stream", b"x" * (MAX_BYTES + 1))], 413),
}


@pytest.mark.parametrize(("files", "status"), BAD.values(), ids=BAD.keys())
async def test_bad_attachments_are_refused_before_any_turn(
    api: Api, files: Any, status: int
) -> None:
    async with api.post({"text": "look", "attachments": files}) as response:
        assert response.status == status
        error = await json_error(response)
    async with api.post({"text": "look", "attachments": files}, sse=True) as response:
        assert response.status == status
        assert await json_error(response) == error
    ws = await api.socket()
    await ws.send_json({"type": "message", "conversation": "c1", "id": "x",
                        "text": "look", "attachments": files})  # fmt: skip
    frame = await ws.receive_json(timeout=10)
    await ws.close()

    assert frame == {"type": "error", "id": "x", "error": error}
    assert api.recorder.messages == [] and api.fake.chat_requests() == []


async def test_the_text_keeps_max_body_beside_files(api: Api) -> None:
    """The room made for files is for files: 70 KB of text with a small file is still 413."""
    body = {"text": "x" * 70_000, "attachments": [attachment("a.png", "image/png", png())]}
    async with api.post(body) as response:
        assert response.status == 413
        await json_error(response)
    ws = await api.socket()
    await ws.send_json({"type": "message", "conversation": "c1", "id": "x", **body})
    frame = await ws.receive_json(timeout=10)
    await ws.close()
    assert frame["type"] == "error" and "65536" in frame["error"]
    assert api.recorder.messages == []


# ---- files out -----------------------------------------------------------------------------


def drawn() -> OutgoingFile:
    return OutgoingFile(png(4, 4, "blue"), "drawing.png", "image/png", MediaKind.IMAGE,
                        caption="A **blue** square")  # fmt: skip


def assert_is_drawn(event: dict[str, Any]) -> None:
    file = drawn()
    assert {k: event[k] for k in ("name", "mime_type", "kind", "caption")} == {
        "name": "drawing.png", "mime_type": "image/png", "kind": "image",
        "caption": "A **blue** square",
    }  # fmt: skip
    assert base64.b64decode(event["data"]) == file.data


async def test_a_sent_file_arrives_as_an_sse_event_beside_the_usual_ones(api: Api) -> None:
    api.recorder.to_send = [drawn()]
    async with api.post({"text": "draw a square"}, sse=True) as response:
        assert response.status == 200
        events = await all_events(response)

    names = [name for name, _ in events]
    assert names[0] == "file" and names[-1] == "done" and set(names) == {"file", "delta", "done"}
    assert_is_drawn(events[0][1])
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    assert deltas == events[-1][1]["text"] == "echo: draw a square"
    assert events[-1][1] == {"text": "echo: draw a square"}  # `done` is as it was


async def test_a_sent_file_arrives_as_a_websocket_frame(api: Api) -> None:
    api.recorder.to_send = [drawn()]
    ws = await api.socket()
    await ws.send_json({"type": "message", "conversation": "c1", "id": "w1", "text": "draw"})
    frames = await frames_until_done(ws)
    await ws.close()

    assert frames[0]["type"] == "file" and frames[0]["id"] == "w1", frames
    assert_is_drawn(frames[0])
    assert frames[-1] == {"type": "done", "id": "w1", "text": "echo: draw"}


async def test_a_sent_file_is_listed_in_the_json_answer(api: Api) -> None:
    api.recorder.to_send = [drawn(), drawn()]
    async with api.post({"text": "draw two"}) as response:
        assert response.status == 200
        answer = await response.json()

    assert answer["text"] == "echo: draw two"
    assert len(answer["files"]) == 2
    for event in answer["files"]:
        assert_is_drawn(event)


# ---- through the real core alone (no recorder) ---------------------------------------------


@pytest.fixture
async def plain(
    media_settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[Api]:
    async with (
        running_web(media_settings, secrets, redis, jwt_secret=SECRET) as (adapter, port),
        aiohttp.ClientSession() as session,
    ):
        yield Api(f"http://127.0.0.1:{port}", session, fake_openai, Recorder(), adapter)


async def test_the_model_sees_an_image_sent_to_the_web_channel(plain: Api) -> None:
    picture = png(64, 48, "red")
    body = {"text": "what colour?", "attachments": [attachment("red.png", "image/png", picture)]}
    async with plain.post(body) as response:
        assert response.status == 200, await response.text()

    [request] = plain.fake.chat_requests()
    assert request.images == [picture]


async def test_a_drawn_picture_comes_back_as_a_file_event(plain: Api) -> None:
    async with plain.post({"text": "/image a lighthouse at dawn"}, sse=True) as response:
        assert response.status == 200
        events = await all_events(response)

    files = [data for name, data in events if name == "file"]
    assert len(files) == 1 and events[-1][0] == "done", events
    picture = base64.b64decode(files[0]["data"])
    assert picture.startswith(b"\x89PNG") and files[0]["kind"] == "image"
    assert (
        Image.open(io.BytesIO(picture)).convert("RGB").getpixel((0, 0)) == plain.fake.image_colour
    )
    assert len(plain.fake.image_requests()) == 1
