"""The model's media endpoints over the fake OpenAI server, through the real SDK: pictures are
drawn and decoded, voice notes uploaded as the API reads them, speech comes back as Ogg Opus,
failures become LLMError; and a user turn's images reach the chat model as content parts."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from openai import AsyncOpenAI, BadRequestError
from PIL import Image as PILImage

from core.config import LLMSettings
from core.llm.openai_chat import OpenAIChat, make_client
from core.llm.openai_media import OpenAIMedia, audio_name
from core.model import Image, Turn
from core.protocols import LLMError
from tests.fakes.openai_server import FakeOpenAI, Reply

SETTINGS = LLMSettings(model="gpt-test", chunk_timeout=2, max_retries=0)


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    client = make_client(SETTINGS, api_key="sk-test", base_url=fake_openai.base_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def media(client: AsyncOpenAI) -> OpenAIMedia:
    return OpenAIMedia(client, SETTINGS)


def png(colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), colour).save(out, format=fmt)
    return out.getvalue()


async def test_draw_returns_the_png(media: OpenAIMedia, fake_openai: FakeOpenAI) -> None:
    fake_openai.image_colour = (10, 200, 30)
    data = await media.draw("a green square", model="gpt-image-1", size="1024x1024")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with PILImage.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.convert("RGB").getpixel((5, 5)) == (10, 200, 30)
    sent = fake_openai.image_requests()[0].body
    assert sent == {"model": "gpt-image-1", "prompt": "a green square", "size": "1024x1024", "n": 1}


async def test_dall_e_is_asked_for_base64(media: OpenAIMedia, fake_openai: FakeOpenAI) -> None:
    """dall-e answers with a URL unless asked; gpt-image models refuse the parameter."""
    data = await media.draw("a cat", model="dall-e-3", size="1024x1024")
    assert data.startswith(b"\x89PNG")
    assert fake_openai.image_requests()[0].body["response_format"] == "b64_json"


async def test_a_url_instead_of_the_image_is_not_fetched(
    media: OpenAIMedia, fake_openai: FakeOpenAI
) -> None:
    fake_openai.image_url_only = True
    with pytest.raises(LLMError, match="gave a URL"):
        await media.draw("a cat", model="gpt-image-1", size="1024x1024")
    assert len(fake_openai.requests) == 1  # only the generation: nothing went to the URL


async def test_transcribe_uploads_the_voice_note(
    media: OpenAIMedia, fake_openai: FakeOpenAI
) -> None:
    voice = b"OggS\x00\x02" + bytes(200)
    fake_openai.transcripts[voice] = "remind me to buy milk"
    text = await media.transcribe(
        voice, name="voice.ogg", mime_type="audio/ogg", model="gpt-4o-mini-transcribe"
    )
    assert text == "remind me to buy milk"
    record = fake_openai.transcription_requests()[0]
    assert record.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert record.upload is not None
    assert (record.upload.filename, record.upload.content_type) == ("voice.ogg", "audio/ogg")
    assert record.upload.data == voice
    assert record.body["model"] == "gpt-4o-mini-transcribe"


async def test_telegram_oga_is_sent_as_ogg(media: OpenAIMedia, fake_openai: FakeOpenAI) -> None:
    """gpt-4o-*-transcribe refuse the `.oga` of Telegram's voice notes (the fake too)."""
    text = await media.transcribe(
        b"OggS-voice", name="file_12.oga", mime_type="audio/ogg", model="gpt-4o-mini-transcribe"
    )
    assert text == "hello from a voice note"
    upload = fake_openai.transcription_requests()[0].upload
    assert upload is not None and upload.filename == "file_12.ogg"


def test_audio_names() -> None:
    assert audio_name("voice.oga", "audio/ogg") == "voice.ogg"
    assert audio_name("memo.M4A", "audio/mp4") == "memo.M4A"
    assert audio_name("voice", "audio/ogg") == "voice.ogg"
    assert audio_name("", "audio/mpeg") == "audio.mp3"
    assert audio_name("../../etc/clip.opus", "") == "clip.ogg"
    assert audio_name("clip.xyz", "application/x-unknown") == "clip.xyz"  # the API will say


async def test_the_fake_refuses_what_the_api_refuses(
    client: AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """The fake is only worth testing against if it says no where OpenAI does."""
    transcriptions = client.audio.transcriptions
    with pytest.raises(BadRequestError, match="Unsupported file format oga"):
        await transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("v.oga", b"x", "audio/ogg")
        )
    whisper = await transcriptions.create(model="whisper-1", file=("v.oga", b"x", "audio/ogg"))
    assert whisper.text == "hello from a voice note"
    with pytest.raises(BadRequestError, match="unsupported image"):
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        )


async def test_a_transcription_without_a_file_is_refused(fake_openai: FakeOpenAI) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "gpt-4o-mini-transcribe")
    form.add_field("other", b"x", filename="v.ogg", content_type="audio/ogg")
    async with aiohttp.ClientSession() as session:
        url = fake_openai.base_url + "/audio/transcriptions"
        async with session.post(url, data=form) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"


async def test_speak_returns_ogg_opus(media: OpenAIMedia, fake_openai: FakeOpenAI) -> None:
    data = await media.speak("Hello there.", model="gpt-4o-mini-tts", voice="alloy")
    assert data.startswith(b"OggS")
    assert data[28:36] == b"OpusHead"  # the first page's packet (RFC 7845)
    assert fake_openai.speech_requests()[0].body == {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": "Hello there.",
        "response_format": "opus",
    }


@pytest.mark.parametrize("status", [500, 429])
async def test_errors_become_llm_errors(
    media: OpenAIMedia, fake_openai: FakeOpenAI, status: int
) -> None:
    fake_openai.push_images(Reply("error", status=status, retry_after=0.01))
    fake_openai.push_transcriptions(Reply("error", status=status))
    fake_openai.push_speech(Reply("error", status=status))
    with pytest.raises(LLMError) as drawn:
        await media.draw("a cat", model="gpt-image-1", size="1024x1024")
    assert (
        str(drawn.value)
        == f"{'InternalServerError' if status == 500 else 'RateLimitError'} (HTTP {status})"
    )
    with pytest.raises(LLMError, match=f"HTTP {status}"):
        await media.transcribe(b"x", name="v.ogg", mime_type="audio/ogg", model="whisper-1")
    with pytest.raises(LLMError, match=f"HTTP {status}"):
        await media.speak("hi", model="gpt-4o-mini-tts", voice="alloy")
    assert "sk-test" not in str(drawn.value)


async def test_a_refused_request_is_an_llm_error(
    media: OpenAIMedia, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(LLMError, match=r"BadRequestError \(HTTP 400\)"):
        await media.draw("a cat", model="gpt-image-1", size="999x999")
    with pytest.raises(LLMError, match=r"BadRequestError \(HTTP 400\)"):
        await media.speak("x" * 5000, model="gpt-4o-mini-tts", voice="alloy")


async def test_the_sdk_retries_a_failed_drawing(fake_openai: FakeOpenAI) -> None:
    settings = LLMSettings(model="gpt-test", max_retries=1)
    client = make_client(settings, api_key="sk-test", base_url=fake_openai.base_url)
    try:
        fake_openai.push_images(Reply("error", status=503, retry_after=0.01))
        data = await OpenAIMedia(client, settings).draw("a cat", model="gpt-image-1", size="auto")
    finally:
        await client.close()
    assert data.startswith(b"\x89PNG")
    assert len(fake_openai.image_requests()) == 2


async def test_a_stalled_server_times_out(client: AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    media = OpenAIMedia(client, SETTINGS, draw_timeout=0.3, speak_timeout=0.3)
    fake_openai.push_images(Reply("stall"))
    fake_openai.push_speech(Reply("stall"))
    started = time.monotonic()
    with pytest.raises(LLMError, match="Timeout"):
        await media.draw("a cat", model="gpt-image-1", size="1024x1024")
    with pytest.raises(LLMError, match="Timeout"):
        await media.speak("hi", model="gpt-4o-mini-tts", voice="alloy")
    assert time.monotonic() - started < 5


async def test_connection_refused_is_an_llm_error() -> None:
    client = make_client(SETTINGS, api_key="sk-secret", base_url="http://127.0.0.1:9/v1")
    try:
        # the SDK's aiohttp transport reports a refused connection as a connect timeout
        with pytest.raises(LLMError, match=r"APIConnectionError|APITimeoutError") as caught:
            await OpenAIMedia(client, SETTINGS).speak("hi", model="tts-1", voice="alloy")
    finally:
        await client.close()
    assert "sk-secret" not in str(caught.value)


# The chat model sees a user turn's images


async def test_images_go_to_the_chat_model_as_content_parts(
    client: AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    red, jpeg = png((200, 30, 30)), png((0, 0, 255), "JPEG")
    turns = [
        Turn("user", "earlier, with a stored picture", images=(Image("blob-1", "image/png"),)),
        Turn("assistant", "ok"),
        Turn(
            "user",
            "what is in these?",
            name="Ann",
            images=(Image("a", "image/png", red), Image("b", "image/jpeg", jpeg)),
        ),
    ]
    answer = await OpenAIChat(client, SETTINGS).complete(turns, model="gpt-4o")
    assert answer.text == "echo: what is in these?"  # the default answers are unchanged
    record = fake_openai.chat_requests()[0]
    assert record.messages[0] == {"role": "user", "content": "earlier, with a stored picture"}
    last = record.messages[2]
    assert last["name"] == "Ann"
    assert [part["type"] for part in last["content"]] == ["text", "image_url", "image_url"]
    assert last["content"][0] == {"type": "text", "text": "what is in these?"}
    assert last["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert last["content"][2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert record.images == [red, jpeg]


async def test_an_image_without_text_is_sent_alone(
    client: AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    chat = OpenAIChat(client, SETTINGS)
    turn = Turn("user", "", images=(Image("a", "image/png", png()),))
    events = [e async for e in chat.stream([turn], model="gpt-4o")]
    assert "".join(e for e in events if isinstance(e, str)) == "echo: "
    content = fake_openai.chat_requests()[0].messages[0]["content"]
    assert [part["type"] for part in content] == ["image_url"]


async def test_text_turns_are_unchanged(client: AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    await OpenAIChat(client, SETTINGS).complete([Turn("user", "hi")], model="gpt-test")
    assert fake_openai.chat_requests()[0].messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "image",
    [
        Image("broken", "image/png", b"\x89PNG\r\n\x1a\n not really a png"),
        Image("text", "image/png", b"plain text"),
    ],
)
async def test_a_broken_image_is_refused(
    client: AsyncOpenAI, fake_openai: FakeOpenAI, image: Image
) -> None:
    chat = OpenAIChat(client, SETTINGS)
    turn = Turn("user", "look", images=(image,))
    with pytest.raises(LLMError, match=r"BadRequestError \(HTTP 400\)"):
        await chat.complete([turn], model="gpt-4o")
    with pytest.raises(LLMError, match=r"BadRequestError \(HTTP 400\)"):
        [e async for e in chat.stream([turn], model="gpt-4o")]
    assert len(fake_openai.chat_requests()) == 2
