"""Media through the whole core on the test Redis and the fake OpenAI server: images seen and
seen again, voice heard, documents read, pictures drawn, answers spoken, bad files answered.
The platforms' own fetching and posting are tested per adapter (test_media_<platform>.py)."""

from __future__ import annotations

import base64
from contextlib import AsyncExitStack

from redis.asyncio import Redis

from bots.assembly import build_core
from core.config import Secrets, Settings
from core.model import MediaKind
from core.storage import UserPeriod
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import FileResponder, attach, user_message
from tests.integration.test_round_trips import HANDSHAKE, counted_core
from tests.media_files import FAKE_IMAGE, jpeg, ogg, pdf, png


async def test_a_photo_reaches_the_model_and_is_seen_again_in_the_follow_up(
    core, fake_openai: FakeOpenAI, redis: Redis
):
    responder = FileResponder()
    photo = attach(responder, "car.jpg", jpeg(80, 60, "red"), MediaKind.IMAGE, "image/jpeg")
    await core.handler(user_message("what is this?", attachments=(photo,)), responder)
    first = fake_openai.chat_requests()[-1]
    assert first.images == [jpeg(80, 60, "red")]
    parts = first.messages[-1]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?\n\n[image: car.jpg]"}
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")

    await core.handler(user_message("and what colour is the car?"), FileResponder())
    follow_up = fake_openai.chat_requests()[-1].messages
    earlier = follow_up[-3]["content"]  # the photo's turn, read back from its blob
    assert base64.b64decode(earlier[1]["image_url"]["url"].split(",", 1)[1]) == jpeg(80, 60, "red")
    assert follow_up[-1]["content"] == "and what colour is the car?"
    key = core.chat.conversation_key(user_message(""))
    stored = await redis.lrange(core.store.keys.history(key), 0, -1)
    assert stored and all(len(raw) < 200 for raw in stored)  # ids, not image bytes


async def test_images_use_the_vision_model_and_old_ones_are_left_out(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    tuned = settings.model_copy(
        update={
            "llm": settings.llm.model_copy(update={"vision_model": "gpt-4o"}),
            "media": settings.media.model_copy(update={"history_images": 1}),
        }
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, tuned, secrets, redis=redis)
        for colour in ("red", "green"):
            responder = FileResponder()
            shot = attach(responder, f"{colour}.png", png(colour=colour), MediaKind.IMAGE)
            await core.handler(user_message("look", attachments=(shot,)), responder)
        assert fake_openai.chat_requests()[-1].body["model"] == "gpt-4o"
        await core.handler(user_message("which was first?"), FileResponder())
        last = fake_openai.chat_requests()[-1]
        assert last.body["model"] == "gpt-4o"  # the history still shows an image
        shown = [m for m in last.messages if isinstance(m["content"], list)]
        assert len(shown) == 1 and "green.png" in shown[0]["content"][0]["text"]
        assert "[image: red.png]" in str(last.messages)  # named, no longer shown


async def test_a_voice_note_is_heard_quoted_and_answered(core, fake_openai: FakeOpenAI):
    responder = FileResponder()
    voice = ogg()
    fake_openai.transcripts[voice] = "remind me what a lighthouse does"
    note = attach(responder, "voice.oga", voice, MediaKind.AUDIO, "audio/ogg")
    await core.handler(user_message("", attachments=(note,)), responder)
    upload = fake_openai.transcription_requests()[-1].upload
    assert upload is not None and upload.data == voice and upload.filename == "voice.ogg"
    assert responder.texts[0] == "> 🎤 _remind me what a lighthouse does_"
    assert responder.texts[1] == "echo: remind me what a lighthouse does"


async def test_a_pdf_is_read_and_questions_about_it_work_later(core, fake_openai: FakeOpenAI):
    responder = FileResponder()
    report = attach(responder, "report.pdf", pdf("Revenue grew 12 percent"), MediaKind.DOCUMENT)
    await core.handler(user_message("summarise", attachments=(report,)), responder)
    said = fake_openai.chat_requests()[-1].messages[-1]["content"]
    assert "Revenue grew 12 percent" in said and said.startswith("summarise")
    await core.handler(user_message("by how much did revenue grow?"), FileResponder())
    history = fake_openai.chat_requests()[-1].messages
    assert any("Revenue grew 12 percent" in str(m["content"]) for m in history[:-1])


async def test_bad_files_get_a_clear_reply_and_the_next_message_still_works(
    core, fake_openai: FakeOpenAI
):
    responder = FileResponder()
    files = (
        attach(responder, "fake.png", FAKE_IMAGE, MediaKind.IMAGE, "image/png"),
        attach(responder, "gone.pdf", pdf("x"), MediaKind.DOCUMENT),
    )
    responder.files.pop("gone.pdf")
    await core.handler(user_message("", attachments=files), responder)
    assert responder.texts == [
        "“fake.png” is not an image I can read.\n\nI couldn't download “gone.pdf”: the "
        "platform answered 404."
    ]
    assert fake_openai.chat_requests() == []  # nothing left to ask the model
    after = FileResponder()
    await core.handler(user_message("hello"), after)
    assert after.texts == ["echo: hello"]


async def test_a_file_too_large_is_refused_unread_and_the_caption_answered(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    tuned = settings.model_copy(
        update={"media": settings.media.model_copy(update={"max_bytes": 1000})}
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, tuned, secrets, redis=redis)
        responder = FileResponder()
        big = attach(responder, "big.jpg", jpeg(400, 400), MediaKind.IMAGE)
        await core.handler(user_message("what's this?", attachments=(big,)), responder)
        assert responder.fetched == []
        assert responder.texts[0] == "“big.jpg” is larger than 0.001 MB, so I did not read it."
        assert responder.texts[1] == "echo: what's this?"


async def test_image_command_draws_posts_and_counts(core, fake_openai: FakeOpenAI):
    responder = FileResponder()
    message = user_message("/image a red lighthouse")
    await core.handler(message, responder)
    request = fake_openai.image_requests()[-1]
    assert request.body["prompt"] == "a red lighthouse"
    assert request.body["model"] == "gpt-image-1"
    [picture] = responder.sent_files
    assert picture.mime_type == "image/png" and picture.data.startswith(b"\x89PNG")
    assert core.usage is not None
    today, month = await core.usage.report(core.store, message)
    assert (today.images, month.images) == (1, 1)
    history = (await core.store.load(core.chat.conversation_key(message))).history
    assert [t.content for t in history] == [
        "/image a red lighthouse",
        "[drew a picture of: a red lighthouse]",
    ]


async def test_a_failed_drawing_is_an_apology_and_counts_nothing(core, fake_openai: FakeOpenAI):
    fake_openai.push_images(Reply("error", status=500), Reply("error", status=500),
                            Reply("error", status=500), Reply("error", status=500))  # fmt: skip
    responder = FileResponder()
    message = user_message("/image a cat")
    await core.handler(message, responder)
    assert responder.sent_files == []
    assert responder.texts == ["Sorry, I couldn't draw that just now. Please try again."]
    periods = [UserPeriod("console", "u1", p) for p in core.usage.periods(core.usage.now())]  # type: ignore[union-attr]
    assert all(t.images == 0 for t in await core.store.usage(periods))


async def test_the_budget_refuses_a_drawing_before_the_call(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    tuned = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"daily_tokens": 5})}
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, tuned, secrets, redis=redis)
        await core.handler(user_message("spend the budget please"), FileResponder())
        responder = FileResponder()
        await core.handler(user_message("/image a cat"), responder)
        assert fake_openai.image_requests() == []
        assert "budget" in responder.shown.lower() and responder.sent_files == []


async def test_the_model_may_draw_with_the_generate_image_tool(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    tuned = settings.model_copy(
        update={"tools": settings.tools.model_copy(update={"enabled": ["generate_image"]})}
    )
    async with AsyncExitStack() as stack:
        core = await build_core(stack, tuned, secrets, redis=redis)
        fake_openai.push(
            Reply(tool_calls=[Call("generate_image", {"prompt": "a blue whale"})]),
            Reply(text="Here is your whale."),
        )
        responder = FileResponder()
        await core.handler(user_message("draw me a whale"), responder)
        assert fake_openai.image_requests()[-1].body["prompt"] == "a blue whale"
        assert [f.mime_type for f in responder.sent_files] == ["image/png"]
        assert responder.texts[-1] == "Here is your whale."
        tool_result = fake_openai.chat_requests()[-1].messages[-1]
        assert tool_result["role"] == "tool" and "posted" in tool_result["content"]


async def test_voice_on_speaks_each_answer_and_off_stops(core, fake_openai: FakeOpenAI):
    await core.handler(user_message("/voice on"), FileResponder())
    responder = FileResponder()
    await core.handler(user_message("tell me **something**"), responder)
    assert responder.texts == ["echo: tell me **something**"]
    [speech] = responder.sent_files
    assert speech.mime_type == "audio/ogg" and speech.data.startswith(b"OggS")
    sent = fake_openai.speech_requests()[-1].body
    assert sent["input"] == "echo: tell me something" and sent["response_format"] == "opus"
    await core.handler(user_message("/voice off"), FileResponder())
    quiet = FileResponder()
    await core.handler(user_message("and now?"), quiet)
    assert quiet.sent_files == [] and len(fake_openai.speech_requests()) == 1


async def test_a_text_turn_stays_two_round_trips_and_an_image_follow_up_reads_once_more(
    standalone_redis_url: str, settings: Settings, secrets: Secrets, redis: Redis
):
    async with counted_core(standalone_redis_url, settings, secrets) as (core, _, connection):

        def trips() -> list[bytes]:
            return [w for w in connection.writes if not any(h in w[:40] for h in HANDSHAKE)]

        connection.writes.clear()
        await core.handler(user_message("plain text"), FileResponder())
        assert len(trips()) == 2
        responder = FileResponder()
        shot = attach(responder, "a.png", png(), MediaKind.IMAGE)
        connection.writes.clear()
        await core.handler(user_message("look", attachments=(shot,)), responder)
        assert len(trips()) == 2  # the image blob rides in the turn's write
        connection.writes.clear()
        await core.handler(user_message("and?"), FileResponder())
        assert len(trips()) == 3 and b"MGET" in trips()[1]  # the history's image, read once
