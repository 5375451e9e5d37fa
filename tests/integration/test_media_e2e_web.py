"""Media on the web channel, end to end (issue #18): attachments in the API's POST body and
WebSocket frames into the real adapter (JWT mode) over the whole core on the test Redis and
the fake OpenAI server's vision, Images and transcription endpoints. No recording handler in
between: what is asserted is what the client got back and what OpenAI received.

The web has no download to fail (the bytes come with the request): a file too large is
refused by the API itself (413, before any turn), a fake image is answered by the core."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_web_api import SECRET, all_events, bearer, json_error, sse_events
from tests.media_files import FAKE_IMAGE, ogg, pdf, png
from tests.web_channel import running_web

MAX_BYTES = 50_000  # media.max_bytes: every file below fits but the "large" one
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def attachment(name: str, mime_type: str, data: bytes) -> dict[str, str]:
    return {"name": name, "mime_type": mime_type, "data": base64.b64encode(data).decode()}


@dataclass
class Client:
    base: str
    session: aiohttp.ClientSession

    def url(self, conversation: str) -> str:
        return f"{self.base}/api/conversations/{conversation}/messages"

    async def ask(self, conversation: str, text: str = "", **body: Any) -> dict[str, Any]:
        """A message in JSON mode: the whole answer."""
        async with self.session.post(self.url(conversation), json={"text": text, **body},
                                     headers=bearer()) as response:  # fmt: skip
            assert response.status == 200, await response.text()
            return await response.json()

    def stream(self, conversation: str, text: str, **body: Any) -> Any:
        headers = {**bearer(), "Accept": "text/event-stream"}
        return self.session.post(self.url(conversation), json={"text": text, **body},
                                 headers=headers)  # fmt: skip


@pytest.fixture
async def client(
    key_prefix: str, tmp_path: Path, secrets: Secrets, redis: Any
) -> AsyncIterator[Client]:
    settings = make_settings(key_prefix, tmp_path, media={"max_bytes": MAX_BYTES})
    async with (
        running_web(settings, secrets, redis, jwt_secret=SECRET) as (_, port),
        aiohttp.ClientSession() as session,
    ):
        yield Client(f"http://127.0.0.1:{port}", session)


async def test_a_photo_is_seen_answered_and_seen_again(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    picture = png(64, 48, "red")
    photo = attachment("car.png", "image/png", picture)
    answer = await client.ask("c1", "what is in this photo?", attachments=[photo])
    assert answer["text"].startswith("echo: what is in this photo?")
    assert fake_openai.chat_requests()[-1].images == [picture]

    answer = await client.ask("c1", "and what colour is the car?")
    assert answer["text"] == "echo: and what colour is the car?"
    follow_up = fake_openai.chat_requests()[-1].messages
    earlier = follow_up[-3]["content"]  # the photo's turn, its image read back from Redis
    assert base64.b64decode(earlier[1]["image_url"]["url"].split(",", 1)[1]) == picture
    assert follow_up[-1]["content"] == "and what colour is the car?"

    await client.ask("c2", "and in this conversation?")  # another conversation: no photo
    assert "image_url" not in str(fake_openai.chat_requests()[-1].messages)


async def test_image_typed_sends_the_picture_back_where_it_was_asked(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    async with client.stream("c1", "/image a lighthouse at dawn") as response:
        assert response.status == 200
        events = await all_events(response)
    [drawn] = [data for name, data in events if name == "file"]
    assert events[-1][0] == "done"
    picture = base64.b64decode(drawn["data"])
    assert picture.startswith(PNG_MAGIC) and drawn["kind"] == "image"
    assert drawn["mime_type"] == "image/png"
    colour = Image.open(io.BytesIO(picture)).convert("RGB").getpixel((0, 0))
    assert colour == fake_openai.image_colour
    assert fake_openai.image_requests()[-1].body["prompt"] == "a lighthouse at dawn"

    # over the WebSocket: a `file` frame with the asking message's id, among other talk
    ws = await client.session.ws_connect(f"{client.base}/api/ws", headers=bearer())
    await ws.send_json({"type": "message", "conversation": "c2", "id": "draw",
                        "text": "/image a blue whale"})  # fmt: skip
    await ws.send_json({"type": "message", "conversation": "c3", "id": "talk", "text": "hi"})
    frames: list[dict[str, Any]] = []
    while len([f for f in frames if f["type"] == "done"]) < 2:
        frames.append(await ws.receive_json(timeout=10))
    await ws.close()
    [file] = [f for f in frames if f["type"] == "file"]
    assert file["id"] == "draw" and base64.b64decode(file["data"]).startswith(PNG_MAGIC)
    assert fake_openai.image_requests()[-1].body["prompt"] == "a blue whale"
    done = sorted((f["id"], f["text"]) for f in frames if f["type"] == "done")
    assert done == [("draw", ""), ("talk", "echo: hi")]  # a picture alone ends its answer


async def test_a_picture_alone_ends_its_answer_when_the_message_has_an_id(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    """The page sends an id with every message (retries are answered once)."""
    async with client.stream("c1", "/image a red fox", id="m-1") as response:
        assert response.status == 200
        events: list[tuple[str, Any]] = []
        async with asyncio.timeout(3):  # the picture is drawn in milliseconds here
            async for event in sse_events(response):
                events.append(event)
    assert [name for name, _ in events] == ["file", "done"]


async def test_an_audio_attachment_is_transcribed_quoted_and_answered(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    voice = ogg()
    fake_openai.transcripts[voice] = "remind me what a lighthouse does"
    answer = await client.ask("c1", attachments=[attachment("voice.ogg", "audio/ogg", voice)])
    heard, said = answer["text"].split("\n\n")
    assert heard == "> 🎤 _remind me what a lighthouse does_"
    assert said == "echo: remind me what a lighthouse does"
    upload = fake_openai.transcription_requests()[-1].upload
    assert upload is not None and upload.data == voice and upload.filename.endswith(".ogg")


async def test_a_pdf_with_a_question_reaches_the_model_as_text(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    report = attachment("report.pdf", "application/pdf", pdf("Revenue grew 12 percent"))
    answer = await client.ask("c1", "what does the report say?", attachments=[report])
    assert answer["text"].startswith("echo: what does the report say?")
    said = fake_openai.chat_requests()[-1].messages[-1]["content"]
    assert said.startswith("what does the report say?") and "Revenue grew 12 percent" in said


async def test_bad_files_get_clear_replies_and_the_next_message_is_answered(
    client: Client, fake_openai: FakeOpenAI
) -> None:
    huge = attachment("huge.png", "image/png", PNG_MAGIC + bytes(MAX_BYTES))
    async with client.session.post(client.url("c1"), json={"text": "", "attachments": [huge]},
                                   headers=bearer()) as response:  # fmt: skip
        assert response.status == 413
        assert str(MAX_BYTES) in await json_error(response)

    fake = attachment("fake.png", "image/png", FAKE_IMAGE)
    answer = await client.ask("c1", attachments=[fake])
    assert answer["text"] == "“fake.png” is not an image I can read."
    assert fake_openai.chat_requests() == []  # nothing was left to ask the model

    fake = attachment("fake.png", "image/png", FAKE_IMAGE)
    answer = await client.ask("c1", "what is 2+2?", attachments=[fake])
    problem, said = answer["text"].split("\n\n")
    assert problem == "“fake.png” is not an image I can read."
    assert said.startswith("echo: what is 2+2?")

    answer = await client.ask("c1", "hello again")
    assert answer["text"] == "echo: hello again"
    assert fake_openai.chat_requests()[-1].messages[-1]["content"] == "hello again"
