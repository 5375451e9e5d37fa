"""Slack files, end to end through the real adapter, slack-bolt and slack-sdk against the fake:
files on events become attachments, responders fetch them with the bot token from the file
host only, and post files into the thread the text answers go to (`files_upload_v2`).

The adapter's handler is the test's own recorder (the core is a `Handler`), so the tests see
the exact `Message` and the responder the adapter hands the core.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from adapters.slack import SlackAdapter
from core.model import Attachment, MediaKind, Message, OutgoingFile
from core.protocols import FetchError, MediaResponder, Responder
from tests.conftest import make_settings
from tests.fakes.common import serve_locally
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    file_share,
    mention,
    message,
    sign,
)
from tests.helpers import wait_for

CHANNEL = "C0GENERAL"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@dataclass
class Bot:
    adapter: SlackAdapter
    slack: FakeSlack
    port: int
    received: list[tuple[Message, Responder]]

    async def post(self, body: str, content_type: str) -> int:
        url = f"http://127.0.0.1:{self.port}/slack/events"
        headers = {**sign(body), "Content-Type": content_type}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            return response.status

    async def event(self, event: dict[str, Any]) -> tuple[Message, Responder]:
        """Slack delivers `event`, signed; the message and responder the core was handed."""
        before = len(self.received)
        assert await self.post(json.dumps(event_body(event)), "application/json") == 200
        await wait_for(lambda: len(self.received) > before)
        return self.received[-1]

    async def slash(self, text: str) -> tuple[Message, Responder]:
        form = {"command": "/ask", "text": text, "user_id": "U0ANN", "user_name": "ann",
                "channel_id": CHANNEL, "team_id": "T0TEST", "trigger_id": "tr1",
                "response_url": f"http://127.0.0.1:{self.slack.port}/api/respond",
                "token": "unused"}  # fmt: skip
        before = len(self.received)
        assert await self.post(urlencode(form), "application/x-www-form-urlencoded") == 200
        await wait_for(lambda: len(self.received) > before)
        return self.received[-1]


async def _bot(slack: FakeSlack, tmp_path: Path, **platform: Any) -> AsyncIterator[Bot]:
    received: list[tuple[Message, Responder]] = []

    async def record(message: Message, responder: Responder) -> None:
        received.append((message, responder))

    settings = make_settings("slmedia", tmp_path, platforms={"slack": platform})
    adapter = SlackAdapter(record, settings, bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET,
                           api_url=slack.api_url)  # fmt: skip
    app = web.Application()
    adapter.mount(app)
    runner, port = await serve_locally(app)
    await adapter.start()
    try:
        yield Bot(adapter, slack, port, received)
    finally:
        await adapter.close()
        await runner.cleanup()


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Bot]:
    async with FakeSlack() as slack:
        async for running in _bot(slack, tmp_path):
            yield running


def _media(responder: Responder) -> MediaResponder:
    assert isinstance(responder, MediaResponder)
    return responder


async def test_a_mention_with_an_image_carries_it_as_an_attachment(bot: Bot) -> None:
    photo = bot.slack.add_file(PNG, "photo of a cat.png", "image/png")
    event = mention("what is this?", channel=CHANNEL, files=[photo])
    received, _ = await bot.event(event)
    assert received.text == "what is this?"
    assert received.thread == event["ts"]
    assert received.attachments == (
        Attachment("photo of a cat.png", "image/png", photo["url_private_download"], len(PNG),
                   MediaKind.IMAGE),
    )  # fmt: skip
    assert "/download/" in received.attachments[0].handle


async def test_a_file_shared_in_the_dm_is_taken_with_its_text(bot: Bot) -> None:
    pdf = bot.slack.add_file(PDF, "report.pdf", "application/pdf")
    received, _ = await bot.event(file_share("summarise this", [pdf]))
    assert received.private and received.text == "summarise this"
    assert [(a.name, a.kind, a.size) for a in received.attachments] == [
        ("report.pdf", MediaKind.DOCUMENT, len(PDF))
    ]
    # a file with no words at all is a message too
    received, _ = await bot.event(file_share("", [pdf]))
    assert received.text == "" and len(received.attachments) == 1


async def test_file_shares_follow_the_rules_of_text_messages(bot: Bot) -> None:
    """In a thread the bot answers, a file needs no mention; in channel chatter it is not
    taken (and a file_share that mentions the bot is answered by its app_mention)."""
    pdf = bot.slack.add_file(PDF, "notes.pdf", "application/pdf")
    started = mention("hello", channel=CHANNEL)
    await bot.event(started)
    received, _ = await bot.event(
        file_share("and this", [pdf], channel=CHANNEL, channel_type="channel",
                   thread_ts=started["ts"])
    )  # fmt: skip
    assert received.follow_up and received.thread == started["ts"]
    assert received.attachments[0].name == "notes.pdf"
    count = len(bot.received)
    for event in (
        file_share("chatter", [pdf], channel=CHANNEL, channel_type="channel"),
        file_share("<@U0BOT> look", [pdf], channel=CHANNEL, channel_type="channel"),
    ):
        assert await bot.post(json.dumps(event_body(event)), "application/json") == 200
    # an event that is taken arrives within this (the one above did): nothing more came
    await bot.event(message("marker"))
    assert [m.text for m, _ in bot.received[count:]] == ["marker"]


async def test_each_kind_of_file_is_told_by_its_type(bot: Bot) -> None:
    files = [
        bot.slack.add_file(b"ID3...", "song.mp3", "audio/mpeg"),
        # a clip recorded in Slack: `slack_audio`, whatever container it comes in
        bot.slack.add_file(
            b"\x1aE\xdf\xa3",
            "audio_message.webm",
            "video/webm",
            subtype="slack_audio",
            media_display_type="audio",
        ),
        bot.slack.add_file(PDF, "paper.pdf", "application/pdf"),
        bot.slack.add_file(b"a,b\n1,2\n", "data.csv", "text/csv"),
        bot.slack.add_file(b'{"a": 1}', "data.json", "application/json"),
        bot.slack.add_file(b"print(1)\n", "main.py", "application/octet-stream", filetype="python"),
        bot.slack.add_file(b"PK\x03\x04", "archive.zip", "application/zip"),
        bot.slack.add_file(PNG, "pic.jpg", "image/jpeg"),
    ]
    files.append({"id": "F0GONE", "mode": "tombstone"})  # deleted since: not an attachment
    received, _ = await bot.event(file_share("what are these?", files))
    assert [(a.name, a.kind) for a in received.attachments] == [
        ("song.mp3", MediaKind.AUDIO),
        ("audio_message.webm", MediaKind.AUDIO),
        ("paper.pdf", MediaKind.DOCUMENT),
        ("data.csv", MediaKind.DOCUMENT),
        ("data.json", MediaKind.DOCUMENT),
        ("main.py", MediaKind.DOCUMENT),
        ("archive.zip", MediaKind.OTHER),
        ("pic.jpg", MediaKind.IMAGE),
    ]


async def test_fetch_reads_the_exact_bytes_with_the_bot_token(bot: Bot) -> None:
    photo = bot.slack.add_file(PNG, "photo.png", "image/png")
    received, responder = await bot.event(mention("look", channel=CHANNEL, files=[photo]))
    data = await _media(responder).fetch(received.attachments[0], max_bytes=1_000_000)
    assert data == PNG
    assert [(d.path, d.authorized) for d in bot.slack.downloads] == [
        (f"/files-pri/T0TEST-{photo['id']}/download/photo.png", True)
    ]
    # without the token the fake (as Slack) gives a sign-in page, not the file
    async with aiohttp.ClientSession() as session, session.get(photo["url_private"]) as page:
        assert page.status == 200 and b"<html" in await page.read()
    # a handle with only `url_private` is fetched from there
    only_private = Attachment("photo.png", "image/png", photo["url_private"], len(PNG))
    assert await _media(responder).fetch(only_private, max_bytes=1_000_000) == PNG


async def test_fetch_refuses_other_hosts_and_large_files_before_reading(bot: Bot) -> None:
    photo = bot.slack.add_file(PNG, "photo.png", "image/png")
    received, responder = await bot.event(mention("look", channel=CHANNEL, files=[photo]))
    media = _media(responder)
    for url in ("https://evil.example/x", "https://files.slack.com.evil.example/x",
                "http://files.slack.com/files-pri/x", "file:///etc/passwd", ""):  # fmt: skip
        with pytest.raises(FetchError):
            await media.fetch(Attachment("x.png", "image/png", url), max_bytes=1_000_000)
    assert bot.slack.downloads == []
    with pytest.raises(FetchError, match="larger than"):
        await media.fetch(received.attachments[0], max_bytes=len(PNG) - 1)
    assert await media.fetch(received.attachments[0], max_bytes=len(PNG)) == PNG


async def test_a_failing_download_is_a_fetch_error(bot: Bot) -> None:
    photo = bot.slack.add_file(PNG, "photo.png", "image/png")
    received, responder = await bot.event(mention("look", channel=CHANNEL, files=[photo]))
    attachment, media = received.attachments[0], _media(responder)
    bot.slack.fail_download(photo["id"], 500)
    with pytest.raises(FetchError, match="500"):
        await media.fetch(attachment, max_bytes=1_000_000)
    gone = Attachment("x.png", "image/png", attachment.handle.replace(photo["id"], "F0NONE"))
    with pytest.raises(FetchError, match="404"):
        await media.fetch(gone, max_bytes=1_000_000)
    # a token without files:read: Slack answers 200 with its sign-in page
    other = bot.slack.add_file(PNG, "other.png", "image/png")
    bot.slack.files_read = False
    with pytest.raises(FetchError, match="sign-in page") as info:
        await media.fetch(Attachment("other.png", "image/png", other["url_private_download"]),
                          max_bytes=1_000_000)  # fmt: skip
    assert BOT_TOKEN not in str(info.value)


async def test_send_file_posts_into_the_same_thread_with_the_caption(bot: Bot) -> None:
    event = mention("draw a cat", channel=CHANNEL)
    _, responder = await bot.event(event)
    drawing = OutgoingFile(PNG, "cat.png", "image/png", MediaKind.IMAGE,
                           caption="Here is **your** cat <!here>")  # fmt: skip
    ref = await _media(responder).send_file(drawing)
    [upload] = bot.slack.uploads
    assert (upload.channel, upload.thread_ts) == (CHANNEL, event["ts"])
    assert (upload.data, upload.filename) == (PNG, "cat.png")
    assert upload.initial_comment == "Here is *your* cat &lt;!here&gt;"  # mrkdwn, no ping
    assert ref.id == upload.file_id and ref.channel == CHANNEL
    steps = [c.method for c in bot.slack.calls if c.method.startswith("files.")]
    assert steps == ["files.getUploadURLExternal", "files.completeUploadExternal"]
    assert bot.slack.calls_of("files.getUploadURLExternal")[0].params["length"] == str(len(PNG))


async def test_send_file_in_a_dm_goes_where_the_text_goes(bot: Bot) -> None:
    _, responder = await bot.event(message("speak to me"))
    voice = OutgoingFile(b"OggS" + bytes(100), "answer.ogg", "audio/ogg", MediaKind.AUDIO)
    await _media(responder).send_file(voice)
    [upload] = bot.slack.uploads_in("D0ANN")  # top level, as DMs are answered by default
    assert upload.data == voice.data and upload.initial_comment is None


async def test_responder_for_recovery_fetches_and_posts_in_the_thread(bot: Bot) -> None:
    photo = bot.slack.add_file(PNG, "photo.png", "image/png")
    event = mention("look", channel=CHANNEL, files=[photo])
    received, _ = await bot.event(event)
    recovered = _media(bot.adapter.responder_for(received))
    assert await recovered.fetch(received.attachments[0], max_bytes=1_000_000) == PNG
    await recovered.send_file(OutgoingFile(PDF, "notes.pdf", "application/pdf",
                                           MediaKind.DOCUMENT, caption="notes"))  # fmt: skip
    [upload] = bot.slack.uploads_in(CHANNEL, event["ts"])
    assert upload.data == PDF and upload.initial_comment == "notes"


async def test_an_assistant_thread_message_with_a_file(bot: Bot) -> None:
    thread = "1690000000.999999"
    clip = bot.slack.add_file(b"\x1aE\xdf\xa3" * 10, "audio_message.webm", "audio/webm",
                              subtype="slack_audio")  # fmt: skip
    received, responder = await bot.event(file_share("", [clip], thread_ts=thread))
    assert received.attachments[0].kind is MediaKind.AUDIO and received.thread == thread
    media = _media(responder)
    assert await media.fetch(received.attachments[0], max_bytes=1_000_000) == b"\x1aE\xdf\xa3" * 10
    await media.send_file(OutgoingFile(b"x", "a.txt", "text/plain", MediaKind.DOCUMENT))
    assert [u.filename for u in bot.slack.uploads_in("D0ANN", thread)] == ["a.txt"]


async def test_a_private_slash_answer_posts_its_file_in_the_dm(tmp_path: Path) -> None:
    """Slack has no ephemeral files: the file goes to the asker's DM, not the channel."""
    async with FakeSlack() as slack:
        async for bot in _bot(slack, tmp_path, ephemeral=True):
            _, responder = await bot.slash("draw a cat")
            await _media(responder).send_file(
                OutgoingFile(PNG, "cat.png", "image/png", MediaKind.IMAGE, caption="a cat")
            )
            assert slack.calls_of("conversations.open")[0].params["users"] == "U0ANN"
            [upload] = slack.uploads
            assert (upload.channel, upload.thread_ts, upload.data) == ("DU0ANN", None, PNG)
            assert slack.uploads_in(CHANNEL) == []


async def test_a_public_slash_answer_posts_its_file_in_the_channel(bot: Bot) -> None:
    _, responder = await bot.slash("draw a cat")
    await _media(responder).send_file(OutgoingFile(PNG, "cat.png", "image/png", MediaKind.IMAGE))
    assert [u.data for u in bot.slack.uploads_in(CHANNEL)] == [PNG]
