"""The media core: real types from bytes, images scaled, documents read and cut, a message's
files gathered with one sentence per file that could not be read."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from core.llm.tokens import IMAGE_TOKENS, TokenCounter
from core.media.documents import Unreadable, read_document
from core.media.images import NotAnImage, prepare_image
from core.media.reader import MediaReader, heard_line
from core.media.sniff import audio_type, image_type, is_pdf, text_of
from core.media.speech import speakable
from core.model import Image, MediaKind, Turn
from core.sections import MediaSettings
from stores.redis.store import decode_turn, encode_turn
from tests.helpers import FileResponder, RecordingResponder, attach, user_message
from tests.media_files import FAKE_IMAGE, jpeg, ogg, pdf, png


def test_types_come_from_the_bytes_not_the_name():
    assert image_type(png()) == "image/png"
    assert image_type(jpeg()) == "image/jpeg"
    assert image_type(pdf("x")) == ""
    assert audio_type(ogg()) == "audio/ogg"
    assert audio_type(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio/wav"
    assert audio_type(b"\x00\x00\x00\x20ftypM4A ") == "audio/mp4"
    assert audio_type(png()) == ""
    assert is_pdf(pdf("x")) and not is_pdf(b"hello")
    assert text_of("héllo, wörld".encode()) == "héllo, wörld"
    assert text_of(png()) is None


def test_a_small_image_is_sent_as_it_is_and_a_large_one_scaled_down():
    small = png(100, 50)
    assert prepare_image(small, 1536) == (small, "image/png")
    scaled, mime = prepare_image(jpeg(4000, 2000), 1536)
    assert mime == "image/jpeg"
    assert PILImage.open(io.BytesIO(scaled)).size == (1536, 768)


def test_transparency_survives_scaling():
    out = io.BytesIO()
    PILImage.new("RGBA", (3000, 3000), (255, 0, 0, 0)).save(out, "PNG")
    scaled, mime = prepare_image(out.getvalue(), 512)
    assert mime == "image/png"
    assert PILImage.open(io.BytesIO(scaled)).mode == "RGBA"


@pytest.mark.parametrize("data", [FAKE_IMAGE, b"", pdf("not an image"), b"GIF89a" + b"\x00" * 9])
def test_what_is_not_an_image_is_refused(data: bytes):
    with pytest.raises(NotAnImage):
        prepare_image(data, 1536)


def test_a_decompression_bomb_is_refused_unread():
    out = io.BytesIO()
    PILImage.new("1", (12000, 12000)).save(out, "PNG")  # 144 Mpx in a few kB
    with pytest.raises(NotAnImage):
        prepare_image(out.getvalue(), 1536)


def test_documents_pdf_text_and_what_cannot_be_read():
    assert read_document(pdf("First page", "Second page"), 50).text == "First page\n\nSecond page"
    capped = read_document(pdf("one", "two", "three"), 2)
    assert (capped.text, capped.pages, capped.read_pages) == ("one\n\ntwo", 3, 2)
    assert read_document(b"a,b\n1,2\n", 5).text == "a,b\n1,2"
    with pytest.raises(Unreadable, match="no text"):
        read_document(pdf(""), 50)
    with pytest.raises(Unreadable, match="could not be read"):
        read_document(b"%PDF-1.4\ngarbage", 50)
    with pytest.raises(Unreadable, match="not a text file"):
        read_document(png(), 50)


def reader(**settings: object) -> MediaReader:
    return MediaReader(
        MediaSettings(**settings),  # type: ignore[arg-type]
        None,
        TokenCounter("estimate"),
        transcription_model="whisper",
        document_tokens=100,
    )


async def test_files_are_read_in_beside_the_text():
    responder = FileResponder()
    files = (
        attach(responder, "cat.png", png(), MediaKind.IMAGE, "image/png"),
        attach(responder, "notes.pdf", pdf("The launch is on Tuesday"), MediaKind.DOCUMENT),
    )
    gathered = await reader().read(user_message("what is this?", attachments=files), responder)
    assert gathered.problems == []
    assert len(gathered.images) == 1 and gathered.images[0].data == png()
    assert gathered.text.startswith("what is this?\n\n[image: cat.png]")
    assert "[document: notes.pdf]\nThe launch is on Tuesday\n[end of notes.pdf]" in gathered.text


async def test_a_long_document_is_cut_to_its_budget_with_a_note():
    responder = FileResponder()
    long_text = ("word " * 2000).encode()
    files = (attach(responder, "long.txt", long_text, MediaKind.DOCUMENT, "text/plain"),)
    gathered = await reader().read(user_message("", attachments=files), responder)
    assert "cut to fit" in gathered.text
    assert TokenCounter("estimate").text(gathered.text) < 140  # 100 + the notes


async def test_each_unreadable_file_gets_one_clear_sentence():
    responder = FileResponder()
    files = (
        attach(responder, "fake.png", FAKE_IMAGE, MediaKind.IMAGE, "image/png"),
        attach(responder, "big.pdf", pdf("x"), MediaKind.DOCUMENT),
        attach(responder, "scan.pdf", pdf(""), MediaKind.DOCUMENT),
        attach(responder, "archive.zip", b"PK\x03\x04", MediaKind.OTHER),
    )
    responder.files.pop("big.pdf")  # the platform fails the download
    gathered = await reader().read(user_message("", attachments=files), responder)
    assert gathered.images == []
    assert gathered.problems == [
        "“fake.png” is not an image I can read.",
        "I couldn't download “big.pdf”: the platform answered 404.",
        "I couldn't read “scan.pdf”: the PDF has no text I can read (a scan? send its pages "
        "as images).",
        "I can read images, voice notes, PDFs and text files, not “archive.zip”.",
    ]
    assert "archive.zip, not read" in gathered.text


async def test_a_file_over_the_limit_is_not_even_fetched():
    responder = FileResponder()
    big = attach(responder, "big.png", png(), MediaKind.IMAGE)
    gathered = await reader(max_bytes=100).read(user_message("", attachments=(big,)), responder)
    assert responder.fetched == []
    assert gathered.problems == ["“big.png” is larger than 0.0001 MB, so I did not read it."]


async def test_a_responder_without_files_names_them_as_before():
    files = (attach(FileResponder(), "cat.png", png(), MediaKind.IMAGE),)
    message = user_message("look", attachments=files)
    gathered = await reader().read(message, RecordingResponder())
    assert gathered.text == "look\n\n[attached: cat.png]" and not gathered.images


def test_an_image_counts_in_the_prompt_budget():
    counter = TokenCounter("estimate")
    plain = Turn("user", "look")
    with_image = Turn("user", "look", images=(Image("a", "image/png", b"x"),))
    assert counter.turn(with_image) - counter.turn(plain) == IMAGE_TOKENS


def test_a_stored_turn_keeps_its_image_ids_not_their_bytes():
    turn = Turn("user", "look", "Ann", user="U1", images=(Image("ab12", "image/png", b"bytes"),))
    encoded = encode_turn(turn)
    assert "bytes" not in encoded
    assert decode_turn(encoded) == Turn(
        "user", "look", "Ann", user="U1", images=(Image("ab12", "image/png"),)
    )
    assert encode_turn(Turn("user", "plain")) == '{"r":"user","c":"plain"}'


def test_what_is_heard_and_what_is_spoken():
    assert heard_line(["turn the lights off"]) == "> 🎤 _turn the lights off_"
    assert heard_line(["x" * 500]).endswith("…_")
    assert speakable("**Bold** and [a link](https://x.y) with `code`") == (
        "Bold and a link with code"
    )
