"""Telegram files, through the real adapter and python-telegram-bot against the fake Bot API:
photos, documents, voice notes and audio arrive as attachments; `fetch` gets their bytes
through getFile and the file URL (bounded, refusing cleanly); `send_file` posts photos,
voice notes and documents where the answer goes (adapters/telegram_media.py)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.telegram import TelegramAdapter
from core.model import Attachment, MediaKind, Message, OutgoingFile
from core.protocols import FetchError, MediaResponder, Responder
from stores.redis.journal import message_from_json, message_to_json
from tests.conftest import make_settings
from tests.fakes.telegram import (
    BOT_USERNAME,
    FakeTelegram,
    bot_message,
    media_message,
    mention_entity,
)
from tests.helpers import wait_for

TOKEN = "123456:TEST-token"
GROUP = -1001234
MAX_BYTES = 100_000  # the media.max_bytes of these tests
OGG = b"OggS\x00\x02" + bytes(range(256)) * 8  # enough of an Ogg page for a fake


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(out, "PNG")
    return out.getvalue()


class Recorder:
    """The adapter's handler: keeps every message with the responder it came with."""

    def __init__(self) -> None:
        self.got: list[tuple[Message, Responder]] = []

    async def __call__(self, message: Message, responder: Responder) -> None:
        self.got.append((message, responder))

    async def next(self, count: int = 1) -> tuple[Message, MediaResponder]:
        """The `count`-th message (1-based) once it arrived, with its responder."""
        await wait_for(lambda: len(self.got) >= count)
        message, responder = self.got[count - 1]
        assert isinstance(responder, MediaResponder)
        return message, responder


Started = tuple[TelegramAdapter, Recorder]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def bot(tg: FakeTelegram, key_prefix: str, tmp_path: Path) -> AsyncIterator[Started]:
    """The Telegram adapter, polling the fake, its messages going to a `Recorder`."""
    settings = make_settings(
        key_prefix,
        tmp_path,
        platforms={"telegram": {"poll_timeout": 1, "group_max_rate": 10_000}},
        media={"max_bytes": MAX_BYTES},
    )
    recorder = Recorder()
    adapter = TelegramAdapter(recorder, settings, token=TOKEN, api_url=tg.api_url)
    await adapter.start()
    try:
        yield adapter, recorder
    finally:
        await adapter.stop()
        await adapter.close()


async def arrives(tg: FakeTelegram, bot: Started, message: dict[str, Any]) -> Message:
    """Deliver `message` and return what the adapter made of it."""
    recorder = bot[1]
    count = len(recorder.got) + 1
    tg.update(message)
    got, _ = await recorder.next(count)
    return got


# --- intake -----------------------------------------------------------------------------


async def test_a_photo_arrives_as_its_largest_size_with_the_caption_as_text(
    tg: FakeTelegram, bot: Started
) -> None:
    small, large = png(90, 60), png(800, 600)
    small_id = tg.add_file(small, kind="photo")
    large_id = tg.add_file(large, kind="photo")
    message = await arrives(
        tg, bot, media_message({"photo": tg.photo(large_id, small_id)}, caption="what is it?")
    )
    assert message.text == "what is it?"
    assert message.attachments == (
        Attachment("photo.jpg", "image/jpeg", large_id, len(large), MediaKind.IMAGE),
    )
    assert message.private and message.addressed


@pytest.mark.parametrize(
    ("name", "mime", "kind"),
    [
        ("report.pdf", "application/pdf", MediaKind.DOCUMENT),
        ("notes.txt", "text/plain", MediaKind.DOCUMENT),
        ("data.csv", "text/csv", MediaKind.DOCUMENT),
        ("config.json", "application/json", MediaKind.DOCUMENT),
        ("main.py", "text/x-python", MediaKind.DOCUMENT),
        ("lib.rs", "application/octet-stream", MediaKind.DOCUMENT),
        ("scan.png", "image/png", MediaKind.IMAGE),
        ("song.flac", "audio/flac", MediaKind.AUDIO),
        ("archive.zip", "application/zip", MediaKind.OTHER),
        ("blob.bin", "application/octet-stream", MediaKind.OTHER),
    ],
)
async def test_a_document_is_kinded_by_its_type(
    tg: FakeTelegram, bot: Started, name: str, mime: str, kind: MediaKind
) -> None:
    data = b"%PDF-1.4 or whatever the bytes are"
    file_id = tg.add_file(data, name=name, mime_type=mime)
    message = await arrives(tg, bot, media_message({"document": tg.document(file_id)}))
    assert message.text == ""
    assert message.attachments == (Attachment(name, mime, file_id, len(data), kind),)


async def test_a_voice_note_and_an_audio_file_are_audio(tg: FakeTelegram, bot: Started) -> None:
    voice_id = tg.add_file(OGG, kind="voice", mime_type="audio/ogg")
    voice = await arrives(tg, bot, media_message({"voice": tg.voice(voice_id)}))
    assert voice.attachments == (
        Attachment("voice.ogg", "audio/ogg", voice_id, len(OGG), MediaKind.AUDIO),
    )
    song = b"ID3" + bytes(500)
    audio_id = tg.add_file(song, kind="audio", name="tune.mp3", mime_type="audio/mpeg")
    audio = await arrives(tg, bot, media_message({"audio": tg.audio(audio_id)}, caption="lyrics?"))
    assert audio.text == "lyrics?"
    assert audio.attachments == (
        Attachment("tune.mp3", "audio/mpeg", audio_id, len(song), MediaKind.AUDIO),
    )


async def test_in_a_group_media_is_addressed_as_text_would_be(
    tg: FakeTelegram, bot: Started
) -> None:
    recorder = bot[1]
    photo_id = tg.add_file(png(40, 40), kind="photo")
    photo = {"photo": tg.photo(photo_id)}
    where: dict[str, Any] = {"chat_id": GROUP, "kind": "supergroup"}
    tg.update(media_message(photo, **where))  # chatter with a picture: not for the bot
    tg.update(media_message(photo, caption="look at this", **where))
    reply = await arrives(tg, bot, media_message(photo, reply_to=bot_message(GROUP, 77), **where))
    assert reply.text == "" and reply.attachments[0].handle == photo_id
    assert not reply.private
    caption = f"@{BOT_USERNAME} what breed?"
    mentioned = await arrives(
        tg,
        bot,
        media_message(photo, caption=caption, topic=11,
                      entities=[mention_entity(caption, "@" + BOT_USERNAME)], **where),
    )  # fmt: skip
    assert mentioned.text == "what breed?" and mentioned.thread == "11"
    commanded = await arrives(
        tg, bot, media_message(photo, caption=f"/ask@{BOT_USERNAME} describe", **where)
    )
    assert commanded.command is not None and commanded.command.name == "ask"
    assert commanded.command.args == "describe"
    assert len(recorder.got) == 3  # neither the bare picture nor the unaddressed caption


# --- fetch ------------------------------------------------------------------------------


async def test_fetch_returns_the_exact_bytes_from_the_file_url(
    tg: FakeTelegram, bot: Started
) -> None:
    data = png(300, 200)
    file_id = tg.add_file(data, kind="photo")
    tg.update(media_message({"photo": tg.photo(file_id)}))
    message, responder = await bot[1].next()
    assert await responder.fetch(message.attachments[0], MAX_BYTES) == data
    assert tg.calls_of("getFile")[-1].params["file_id"] == file_id
    assert tg.downloads == [tg.files[file_id].file_path]


async def test_fetch_refuses_a_file_announced_too_large_without_downloading(
    tg: FakeTelegram, bot: Started
) -> None:
    file_id = tg.add_file(bytes(5000), name="big.pdf", mime_type="application/pdf")
    tg.update(media_message({"document": tg.document(file_id)}))
    message, responder = await bot[1].next()
    with pytest.raises(FetchError, match="larger than"):
        await responder.fetch(message.attachments[0], 4000)
    assert not tg.calls_of("getFile")  # the update said so: not even asked
    unknown_size = Attachment("big.pdf", "application/pdf", file_id, 0, MediaKind.DOCUMENT)
    with pytest.raises(FetchError, match="larger than"):
        await responder.fetch(unknown_size, 4000)
    assert tg.calls_of("getFile") and not tg.downloads  # getFile said so: never downloaded


async def test_fetch_refuses_a_download_larger_than_announced(
    tg: FakeTelegram, bot: Started
) -> None:
    file_id = tg.add_file(bytes(5000), name="a.pdf", mime_type="application/pdf", file_size=100)
    tg.update(media_message({"document": tg.document(file_id)}))
    message, responder = await bot[1].next()
    with pytest.raises(FetchError, match="larger than"):
        await responder.fetch(message.attachments[0], 4000)
    assert tg.downloads  # it took the download to know
    assert await responder.fetch(message.attachments[0], 5000) == bytes(5000)


async def test_a_download_without_a_length_is_cut_at_the_bound(
    tg: FakeTelegram, bot: Started
) -> None:
    """A server that streams more than announced, without a Content-Length: the read stops
    at media.max_bytes (plus room for an API answer), not at the end of the stream."""
    huge = bytes(MAX_BYTES + 2 * 1024 * 1024)
    file_id = tg.add_file(huge, name="a.bin", file_size=10, chunked=True)
    tg.update(media_message({"document": tg.document(file_id)}))
    message, responder = await bot[1].next()
    with pytest.raises(FetchError, match="larger than"):
        await responder.fetch(message.attachments[0], MAX_BYTES)
    small = tg.add_file(b"streamed", name="b.bin", chunked=True)
    fine = Attachment("b.bin", "", small, 0, MediaKind.OTHER)
    assert await responder.fetch(fine, MAX_BYTES) == b"streamed"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "download failed"), (404, r"refused the file \(not found\)"), (502, "download failed")],
)
async def test_a_failing_download_is_a_fetch_error(
    tg: FakeTelegram, bot: Started, status: int, reason: str
) -> None:
    file_id = tg.add_file(b"never served", name="x.txt", mime_type="text/plain")
    tg.update(media_message({"document": tg.document(file_id)}))
    message, responder = await bot[1].next()
    tg.fail_download(status, "Not Found" if status == 404 else "Bad Gateway")
    with pytest.raises(FetchError, match=reason) as info:
        await responder.fetch(message.attachments[0], MAX_BYTES)
    assert TOKEN not in str(info.value) and TOKEN.split(":")[1] not in str(info.value)
    assert tg.downloads  # it did try


async def test_telegram_refusing_the_file_is_a_fetch_error(tg: FakeTelegram, bot: Started) -> None:
    file_id = tg.add_file(b"x", name="x.txt", mime_type="text/plain")
    tg.update(media_message({"document": tg.document(file_id)}))
    _, responder = await bot[1].next()
    gone = Attachment("x.txt", "text/plain", "no-such-file-id", 1, MediaKind.DOCUMENT)
    with pytest.raises(FetchError, match=r"refused the file \(BadRequest\)"):
        await responder.fetch(gone, MAX_BYTES)
    huge_id = tg.add_file(b"x", name="movie.mkv", file_size=30 * 1024 * 1024)
    huge = Attachment("movie.mkv", "", huge_id, 0, MediaKind.OTHER)
    with pytest.raises(FetchError, match="larger than Telegram lets bots download"):
        await responder.fetch(huge, 100 * 1024 * 1024)  # Telegram's bound, not ours


# --- send_file --------------------------------------------------------------------------


async def asked(tg: FakeTelegram, bot: Started, **where: Any) -> tuple[Message, MediaResponder]:
    """A captioned photo to the bot; its message and responder."""
    photo_id = tg.add_file(png(20, 20), kind="photo")
    count = len(bot[1].got) + 1
    tg.update(media_message({"photo": tg.photo(photo_id)}, caption="/ask draw a cat", **where))
    return await bot[1].next(count)


async def test_send_file_posts_a_photo_in_the_same_topic_replying_with_an_html_caption(
    tg: FakeTelegram, bot: Started
) -> None:
    message, responder = await asked(tg, bot, chat_id=GROUP, kind="supergroup", topic=11)
    picture = png(64, 48)
    ref = await responder.send_file(
        OutgoingFile(picture, "cat.png", "image/png", MediaKind.IMAGE, caption="A **cat** <3")
    )
    (upload,) = tg.uploads
    assert upload.method == "sendPhoto"
    assert (upload.chat_id, upload.thread_id) == (GROUP, 11)
    assert upload.reply_to == int(message.message_id)
    assert upload.data == picture and upload.filename == "cat.png"
    assert upload.content_type == "image/png"
    assert upload.caption == "A <b>cat</b> &lt;3" and upload.parse_mode == "HTML"
    assert ref.id == str(upload.message_id) and ref.channel == str(GROUP)
    await responder.delete(ref)
    assert not tg.uploads


async def test_send_file_posts_a_voice_note_and_a_document(tg: FakeTelegram, bot: Started) -> None:
    _, responder = await asked(tg, bot, chat_id=42)
    await responder.send_file(OutgoingFile(OGG, "answer.ogg", "audio/ogg", MediaKind.AUDIO))
    csv = b"a,b\n1,2\n"
    await responder.send_file(
        OutgoingFile(csv, "export.csv", "text/csv", MediaKind.DOCUMENT, caption="Your data")
    )
    voice, document = tg.uploads_in(42)
    assert (voice.method, voice.data, voice.caption) == ("sendVoice", OGG, "")
    assert voice.content_type == "audio/ogg"
    assert (document.method, document.data, document.filename) == ("sendDocument", csv,
                                                                   "export.csv")  # fmt: skip
    assert document.caption == "Your data"
    assert voice.reply_to is None and voice.thread_id is None  # a private chat: no reply


async def test_a_photo_telegram_cannot_read_goes_as_a_document(
    tg: FakeTelegram, bot: Started
) -> None:
    _, responder = await asked(tg, bot, chat_id=42)
    await responder.send_file(OutgoingFile(b"not a png", "x.png", "image/png", MediaKind.IMAGE))
    assert [c.method for c in tg.calls_of("sendPhoto", "sendDocument")] == [
        "sendPhoto",
        "sendDocument",
    ]
    assert [u.method for u in tg.uploads] == ["sendDocument"]


async def test_a_rejected_caption_markup_is_resent_as_plain_text(
    tg: FakeTelegram, bot: Started
) -> None:
    _, responder = await asked(tg, bot, chat_id=42)
    tg.fail("sendPhoto", 400, "Bad Request: can't parse entities: unsupported start tag")
    await responder.send_file(
        OutgoingFile(png(8, 8), "a.png", "image/png", MediaKind.IMAGE, caption="**bold** move")
    )
    (upload,) = tg.uploads
    assert (upload.caption, upload.parse_mode) == ("bold move", "")


async def test_a_long_caption_is_cut_to_telegrams_limit(tg: FakeTelegram, bot: Started) -> None:
    _, responder = await asked(tg, bot, chat_id=42)
    await responder.send_file(
        OutgoingFile(b"x", "a.txt", "text/plain", MediaKind.DOCUMENT, caption="**word** " * 300)
    )
    (upload,) = tg.uploads
    assert upload.caption.startswith("word word") and upload.caption.endswith("…")
    assert len(upload.caption) == 1024 and upload.parse_mode == ""


async def test_an_upload_waits_out_a_flood_limit(tg: FakeTelegram, bot: Started) -> None:
    """Through the adapter's rate limiter, as every send: a 429 is waited out, not raised."""
    _, responder = await asked(tg, bot, chat_id=42)
    tg.flood("sendDocument", retry_after=1)
    await responder.send_file(OutgoingFile(b"x", "a.txt", "text/plain", MediaKind.DOCUMENT))
    first, second = tg.calls_of("sendDocument")
    assert second.at - first.at >= 0.9
    assert len(tg.uploads) == 1


# --- recovery ---------------------------------------------------------------------------


async def test_recoverys_responder_fetches_and_sends_files(tg: FakeTelegram, bot: Started) -> None:
    """After a crash the journal gives the Message back; `responder_for` rebuilds a
    responder that can still fetch its attachments and post files where it was asked."""
    adapter, recorder = bot
    data = png(30, 30)
    file_id = tg.add_file(data, kind="photo")
    tg.update(media_message({"photo": tg.photo(file_id)}, caption="/ask what is it",
                            chat_id=GROUP, kind="supergroup", topic=7))  # fmt: skip
    original, _ = await recorder.next()
    restored = message_from_json(message_to_json(original))
    assert restored is not None and restored.attachments == original.attachments
    responder = adapter.responder_for(restored)
    assert isinstance(responder, MediaResponder)
    assert await responder.fetch(restored.attachments[0], MAX_BYTES) == data
    await responder.send_file(OutgoingFile(OGG, "a.ogg", "audio/ogg", MediaKind.AUDIO))
    (upload,) = tg.uploads
    assert (upload.method, upload.chat_id, upload.thread_id) == ("sendVoice", GROUP, 7)
    assert upload.reply_to == int(original.message_id)
