"""A local fake of the Telegram Bot API, driven by the real python-telegram-bot.

`POST /bot<token>/<method>` with form or JSON bodies, answered as Telegram answers:
`{"ok": true, "result": ...}` with realistic Message objects, or `{"ok": false,
"error_code": ..., "description": ...}`. getUpdates long-polls for real (holds up to
`timeout`, honours `offset`). An unchanged edit and malformed HTML get Telegram's 400s,
`fail(method, ...)` injects a 429 with `parameters.retry_after`. Every call is recorded.

Files as the Bot API serves them: `add_file(data)` stores one and gives its file_id, which
updates built with `photo` / `document` / `voice` / `audio` and `media_message` carry;
`getFile` gives its `file_path`, and `GET /file/bot<token>/<file_path>` its bytes (404 for
a wrong token or path, `fail_download` for a failure). `sendPhoto`, `sendVoice`,
`sendDocument` and `sendAudio` take a multipart upload under the field of their name (or
`attach://<part>`, or a known file_id), record it in `uploads`, and answer with the Message
Telegram sends back; a photo Pillow cannot read is refused as Telegram refuses it.

Inline keyboards as the Bot API keeps them: `sendMessage` / `editMessageText` take a
`reply_markup` (callback_data over 64 bytes refused), and an edit without one removes the
buttons. `press(chat, message, button)` is a user tapping a button: a `callback_query` update
(id, from, the bot's message with its keyboard, chat_instance, data), delivered only while
`allowed_updates` (the last given to getUpdates or setWebhook) lets that type through.
`answerCallbackQuery` is recorded in `answers` and refused a second time for one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from tests.fakes.common import Screen, read_params, serve_locally

BOT_ID = 7000001
BOT_USERNAME = "TestChatBot"
CAPTION_LIMIT = 1024
MAX_UPLOAD = 50 * 1024 * 1024  # what bots may upload to the cloud Bot API
MAX_DOWNLOAD = 20 * 1024 * 1024  # what getFile serves bots on the cloud Bot API
UPLOAD_FIELDS = {"sendPhoto": "photo", "sendVoice": "voice", "sendDocument": "document",
                 "sendAudio": "audio"}  # fmt: skip
FOLDERS = {"photo": "photos", "voice": "voice", "audio": "music", "document": "documents"}
DATA_LIMIT = 64  # bytes of a button's callback_data
ALERT_LIMIT = 200  # characters of an answerCallbackQuery text
QUERY_GONE = "Bad Request: query is too old and response timeout expired or query ID is invalid"
UPDATE_KINDS = {"message", "edited_message", "channel_post", "edited_channel_post",
                "business_message", "callback_query", "inline_query", "chosen_inline_result",
                "shipping_query", "pre_checkout_query", "poll", "poll_answer", "my_chat_member",
                "chat_member", "chat_join_request", "message_reaction"}  # fmt: skip
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
             "blockquote", "tg-spoiler", "span", "tg-emoji"}  # fmt: skip


@dataclass
class Part:
    """One file part of a multipart request, as it arrived."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    files: dict[str, Part] = field(default_factory=dict)


@dataclass
class StoredFile:
    """A file the fake serves: what getFile says of it and the bytes a download gives."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int  # as announced (a test may make it differ from len(data))
    name: str = ""
    mime_type: str = ""
    chunked: bool = False  # served without a Content-Length


@dataclass
class Upload:
    """A file the bot posted (sendPhoto, sendVoice, sendDocument, sendAudio)."""

    method: str
    chat_id: int
    thread_id: int | None
    message_id: int
    filename: str
    content_type: str
    data: bytes
    caption: str
    parse_mode: str
    reply_to: int | None
    file_id: str


@dataclass
class CallbackAnswer:
    """An answerCallbackQuery: what the presser's client showed (nothing, a toast, an alert)."""

    query_id: str
    text: str
    show_alert: bool


class _HtmlCheck(HTMLParser):
    """Telegram's HTML rules, strictly enough to catch broken markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.error = ""
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            self.error = f'Unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.error = f'Unexpected end tag "{tag}"'


def shown_length(text: str, html: bool) -> int:
    """What Telegram's 4096 limit counts: UTF-16 units of the text after entity parsing."""
    if html:
        checker = _HtmlCheck()
        checker.feed(text)
        checker.close()
        text = "".join(checker.text)
    return len(text.strip().encode("utf-16-le")) // 2


def html_error(text: str) -> str:
    checker = _HtmlCheck()
    checker.feed(text)
    checker.close()
    if not checker.error and checker.stack:
        checker.error = f'Can\'t find end tag corresponding to start tag "{checker.stack[-1]}"'
    if not checker.error and any(
        c in text.replace("&lt;", "").replace("&gt;", "").replace("&amp;", "").replace("&quot;", "")
        for c in "&"
    ):
        checker.error = "Unsupported entity"  # a bare & that is not an entity  # fmt: skip
    return checker.error


class FakeTelegram:
    """`async with FakeTelegram(token) as tg:`; point the bot at `tg.api_url`."""

    def __init__(self, token: str = "123456:TEST-token") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self.messages: dict[tuple[int, int], str] = {}  # (chat, id) -> text as shown
        # (chat, id) -> the message's topic and whether its text is HTML
        self.shapes: dict[tuple[int, int], tuple[int | None, bool]] = {}
        self.markups: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, id) -> its keyboard
        self.answers: list[CallbackAnswer] = []  # answerCallbackQuery calls, in order
        self.queries: dict[str, bool] = {}  # callback query id -> answered
        self.allowed_updates: list[str] = []  # the last given; empty: all but a few
        self.files: dict[str, StoredFile] = {}  # file_id -> the file
        self.uploads: list[Upload] = []  # files the bot posted, in order
        self.downloads: list[str] = []  # file paths downloaded, in order
        self._file_ids = itertools.count(1)
        self.screen = Screen()
        self.failures: dict[str, deque[tuple[int, str, dict[str, Any]]]] = {}
        self._new_update = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.webhook_url = ""
        self.webhook_secret = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application(client_max_size=MAX_UPLOAD + 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner, self.port = await serve_locally(app, shutdown_timeout=0.2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests use -------------------------------------------------------------

    def fail(self, method: str, status: int, description: str, **parameters: Any) -> None:
        """The next call of `method` fails like Telegram would."""
        self.failures.setdefault(method, deque()).append((status, description, parameters))

    def flood(self, method: str, retry_after: int) -> None:
        self.fail(method, 429, f"Too Many Requests: retry after {retry_after}",
                  retry_after=retry_after)  # fmt: skip

    def calls_of(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def sent_texts(self, chat_id: int) -> list[str]:
        """The final text of every message in a chat, in order."""
        return [self.messages[key] for key in self.screen.keys(str(chat_id))]  # type: ignore[index]

    def add_file(
        self,
        data: bytes,
        *,
        kind: str = "document",
        name: str = "",
        mime_type: str = "",
        file_size: int | None = None,
        chunked: bool = False,
    ) -> str:
        """Store a file as Telegram would after a user sent it; returns its file_id.
        `file_size` is what Telegram announces (default: the real size)."""
        number = next(self._file_ids)
        suffix = Path(name).suffix or {"photo": ".jpg", "voice": ".oga", "audio": ".mp3"}.get(
            kind, ""
        )
        stored = StoredFile(
            file_id=f"AgAC{secrets.token_urlsafe(24)}",
            file_unique_id=f"AQAD{secrets.token_urlsafe(8)}",
            file_path=f"{FOLDERS.get(kind, 'documents')}/file_{number}{suffix}",
            data=data,
            file_size=len(data) if file_size is None else file_size,
            name=name,
            mime_type=mime_type,
            chunked=chunked,
        )
        self.files[stored.file_id] = stored
        return stored.file_id

    def photo(self, *file_ids: str) -> list[dict[str, Any]]:
        """A message's `photo` field: one PhotoSize per file, smallest first as Telegram sends."""
        sizes = []
        for file_id in file_ids:
            stored = self.files[file_id]
            width, height = _image_size(stored.data) or (90, 90)
            sizes.append({**self._file_fields(stored), "width": width, "height": height})
        return sorted(sizes, key=lambda size: size["width"] * size["height"])

    def document(self, file_id: str) -> dict[str, Any]:
        """A message's `document` field."""
        stored = self.files[file_id]
        fields = self._file_fields(stored)
        if stored.name:
            fields["file_name"] = stored.name
        if stored.mime_type:
            fields["mime_type"] = stored.mime_type
        return fields

    def voice(self, file_id: str, duration: int = 2) -> dict[str, Any]:
        """A message's `voice` field (a voice note is OGG/Opus)."""
        stored = self.files[file_id]
        return {**self._file_fields(stored), "duration": duration,
                "mime_type": stored.mime_type or "audio/ogg"}  # fmt: skip

    def audio(self, file_id: str, duration: int = 3) -> dict[str, Any]:
        """A message's `audio` field (a music file)."""
        return {**self.document(file_id), "duration": duration}

    @staticmethod
    def _file_fields(stored: StoredFile) -> dict[str, Any]:
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": stored.file_size}  # fmt: skip

    def fail_download(self, status: int = 500, description: str = "Internal Server Error") -> None:
        """The next file download fails with `status`."""
        self.failures.setdefault("download", deque()).append((status, description, {}))

    def uploads_in(self, chat_id: int) -> list[Upload]:
        return [u for u in self.uploads if u.chat_id == chat_id]

    def update(self, message: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates and return it (for webhook delivery too)."""
        update: dict[str, Any] = {"update_id": self.next_update_id(), "message": message}
        self.raw_update(update)
        return update

    def buttons_of(self, chat_id: int, message_id: int) -> list[tuple[str, str]]:
        """(text, callback_data) of every button the message shows now."""
        markup = self.markups.get((chat_id, message_id), {})
        return [(str(button["text"]), str(button.get("callback_data", "")))
                for row in markup.get("inline_keyboard", []) for button in row]  # fmt: skip

    def press(
        self,
        chat_id: int,
        message_id: int,
        button: str = "",
        *,
        data: str | None = None,
        from_id: int = 42,
        first_name: str = "Ann",
    ) -> dict[str, Any]:
        """A user taps `button` (its text) under the bot's message: queue the callback_query
        update and return it (for webhook delivery too). `data` instead of a button is a tap
        on a keyboard the client still shows but the message no longer has."""
        if data is None:
            found = [d for text, d in self.buttons_of(chat_id, message_id) if text == button]
            assert found, f"no button {button!r} under message {message_id}"
            data = found[0]
        message = self._as_delivered(chat_id, message_id)
        query_id = str(secrets.randbits(63))
        self.queries[query_id] = False
        query = {"id": query_id, "from": user(from_id, first_name), "message": message,
                 "chat_instance": str(-abs(chat_id) * 7919), "data": data}  # fmt: skip
        update: dict[str, Any] = {"update_id": self.next_update_id(), "callback_query": query}
        self.raw_update(update)
        return update

    def answered(self, update: dict[str, Any]) -> CallbackAnswer | None:
        """How the bot answered the press in `update` (None: not yet)."""
        query_id = update["callback_query"]["id"]
        return next((a for a in self.answers if a.query_id == query_id), None)

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def raw_update(self, entry: Any) -> Any:
        """Queue any JSON as one getUpdates entry, as a broken Bot API server or proxy might.
        An entry without a numeric `update_id` cannot be confirmed by an offset: served once."""
        self.updates.append(entry)
        asyncio.get_running_loop().create_task(self._notify())
        return entry

    async def _notify(self) -> None:
        async with self._new_update:
            self._new_update.notify_all()

    # --- the Bot API ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await read_params(request)
        files = await _parts(request)
        self.calls.append(Call(method, params, files=files))
        queued = self.failures.get(method)
        if queued:
            status, description, parameters = queued.popleft()
            return _error(status, description, parameters)
        if method in UPLOAD_FIELDS:
            return await self._send_file(method, params, files)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _ok(True)
        response: web.Response = await handler(params)
        return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """`GET /file/bot<token>/<file_path>`: the bytes, or Telegram's JSON 404."""
        path = request.match_info["path"]
        self.downloads.append(path)
        queued = self.failures.get("download")
        if queued:
            status, description, parameters = queued.popleft()
            return _error(status, description, parameters)
        stored = next((f for f in self.files.values() if f.file_path == path), None)
        if request.match_info["token"] != self.token or stored is None:
            return _error(404, "Not Found")
        if not stored.chunked:
            return web.Response(body=stored.data, content_type="application/octet-stream")
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(stored.data), 65536):
            await response.write(stored.data[start : start + 65536])
        await response.write_eof()
        return response

    async def _m_getFile(self, params: dict[str, Any]) -> web.Response:
        stored = self.files.get(str(params.get("file_id", "")))
        if stored is None:
            return _error(400, "Bad Request: invalid file_id")
        if stored.file_size > MAX_DOWNLOAD:
            return _error(400, "Bad Request: file is too big")
        return _ok({**self._file_fields(stored), "file_path": stored.file_path})

    async def _send_file(
        self, method: str, params: dict[str, Any], files: dict[str, Part]
    ) -> web.Response:
        """sendPhoto / sendVoice / sendDocument / sendAudio, as the Bot API takes them."""
        name = UPLOAD_FIELDS[method]
        part = self._uploaded(params.get(name), files.get(name), files)
        if part is None:
            return _error(400, f"Bad Request: there is no {name} in the request")
        caption = str(params.get("caption", "") or "")
        parse_mode = str(params.get("parse_mode", "") or "")
        html = parse_mode.upper() == "HTML"
        if html and caption and html_error(caption):
            return _error(400, f"Bad Request: can't parse entities: {html_error(caption)}")
        if shown_length(caption, html) > CAPTION_LIMIT:
            return _error(400, "Bad Request: message caption is too long")
        size = _image_size(part.data) if name == "photo" else None
        if name == "photo" and size is None:
            return _error(400, "Bad Request: IMAGE_PROCESS_FAILED")
        chat_id, message_id = int(params["chat_id"]), next(self._message_ids)
        file_id = self.add_file(part.data, kind=name, name=part.filename,
                                mime_type=part.content_type)  # fmt: skip
        reply = params.get("reply_parameters")
        thread = params.get("message_thread_id")
        self.uploads.append(Upload(
            method=method, chat_id=chat_id, thread_id=int(thread) if thread else None,
            message_id=message_id, filename=part.filename, content_type=part.content_type,
            data=part.data, caption=caption, parse_mode=parse_mode,
            reply_to=int(reply["message_id"]) if isinstance(reply, dict) else None,
            file_id=file_id,
        ))  # fmt: skip
        self.screen.changed(str(chat_id))
        message = _message(chat_id, message_id, "", params)
        del message["text"]
        if caption:
            message["caption"] = _shown(caption, html)
        if name == "photo":
            assert size is not None
            message["photo"] = [{**self._file_fields(self.files[file_id]),
                                 "width": size[0], "height": size[1]}]  # fmt: skip
        elif name == "voice":
            message["voice"] = self.voice(file_id)
        else:
            message[name] = self.document(file_id) if name == "document" else self.audio(file_id)
        return _ok(message)

    def _uploaded(self, value: Any, part: Part | None, files: dict[str, Part]) -> Part | None:
        """The file a send method was given: an upload under its own field, `attach://x`
        naming another part, or the file_id of a file Telegram already has."""
        if part is not None:
            return part
        if isinstance(value, str) and value.startswith("attach://"):
            return files.get(value.removeprefix("attach://"))
        stored = self.files.get(value) if isinstance(value, str) else None
        if stored is not None:
            return Part(stored.name, stored.mime_type, stored.data)
        return None

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok({"id": BOT_ID, "is_bot": True, "first_name": "Test Bot",
                    "username": BOT_USERNAME, "can_join_groups": True,
                    "can_read_all_group_messages": False,
                    "supports_inline_queries": False})  # fmt: skip

    async def _m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        self._allow(params)
        self.webhook_url = str(params.get("url", ""))
        self.webhook_secret = str(params.get("secret_token", ""))
        return _ok(True)

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = ""
        return _ok(True)

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset", 0) or 0)
        timeout = float(params.get("timeout", 0) or 0)
        self._allow(params)
        if offset:
            self.updates = [u for u in self.updates
                            if (number := _update_id(u)) is None or number >= offset]  # fmt: skip
        if not self.updates and timeout:
            async with self._new_update:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), timeout)
        # Telegram never delivers a type outside allowed_updates
        self.updates = [u for u in self.updates if self._allowed(u)]
        served = list(self.updates[:100])
        self.updates = [u for u in self.updates if not (_update_id(u) is None and u in served)]
        return _ok(served)

    def _allow(self, params: dict[str, Any]) -> None:
        """Telegram keeps the last `allowed_updates` given ("if not specified, the previous
        setting will be used")."""
        given = params.get("allowed_updates")
        if isinstance(given, list):
            self.allowed_updates = [str(kind) for kind in given]

    def _allowed(self, entry: Any) -> bool:
        kinds = [k for k in entry if k in UPDATE_KINDS] if isinstance(entry, dict) else []
        return not kinds or not self.allowed_updates or kinds[0] in self.allowed_updates

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id, text = int(params["chat_id"]), str(params.get("text", ""))
        problem = self._text_problem(text, params) or _markup_problem(params)
        if problem:
            return _error(400, problem)
        message_id = next(self._message_ids)
        self.messages[(chat_id, message_id)] = text
        self._keep(chat_id, message_id, params)
        self.screen.posted(str(chat_id), (chat_id, message_id))
        return _ok(_message(chat_id, message_id, text, params))

    def _keep(self, chat_id: int, message_id: int, params: dict[str, Any]) -> None:
        """What a callback query's `message` needs later (the topic, HTML or not), and the
        keyboard: an edit without `reply_markup` removes it."""
        key = (chat_id, message_id)
        thread = params.get("message_thread_id")
        topic = self.shapes[key][0] if key in self.shapes else int(thread) if thread else None
        self.shapes[key] = (topic, str(params.get("parse_mode", "")).upper() == "HTML")
        markup = params.get("reply_markup")
        if isinstance(markup, dict):
            self.markups[key] = markup
        else:
            self.markups.pop(key, None)

    def _as_delivered(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """The bot's message as a callback query carries it: the text as shown, the topic,
        the keyboard."""
        topic, html = self.shapes[(chat_id, message_id)]
        text = _shown(self.messages[(chat_id, message_id)], html)
        shape = {
            "message_thread_id": topic,
            "reply_markup": self.markups.get((chat_id, message_id)),
        }
        message = _message(chat_id, message_id, text, shape)
        if topic is not None:
            message["is_topic_message"] = True
        return message

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> web.Response:
        query_id = str(params.get("callback_query_id", ""))
        if self.queries.get(query_id, True):  # unknown, or answered already
            return _error(400, QUERY_GONE)
        text = str(params.get("text", "") or "")
        if len(text) > ALERT_LIMIT:
            return _error(400, "Bad Request: MESSAGE_TOO_LONG")
        self.queries[query_id] = True
        alert = params.get("show_alert") in (True, "true", "True")
        self.answers.append(CallbackAnswer(query_id, text, alert))
        return _ok(True)

    async def _m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        text = str(params.get("text", ""))
        if (chat_id, message_id) not in self.messages:
            return _error(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup") or None
        if (self.messages[(chat_id, message_id)] == text
                and self.markups.get((chat_id, message_id)) == markup):  # fmt: skip
            return _error(400, "Bad Request: message is not modified: specified new message "
                               "content and reply markup are exactly the same")  # fmt: skip
        problem = self._text_problem(text, params) or _markup_problem(params)
        if problem:
            return _error(400, problem)
        self.messages[(chat_id, message_id)] = text
        self._keep(chat_id, message_id, params)
        self.screen.changed(str(chat_id))
        return _ok(_message(chat_id, message_id, text, params))

    async def _m_deleteMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        upload = next((u for u in self.uploads_in(chat_id) if u.message_id == message_id), None)
        if upload is not None:
            self.uploads.remove(upload)
            self.screen.changed(str(chat_id))
            return _ok(True)
        if self.messages.pop((chat_id, message_id), None) is None:
            return _error(400, "Bad Request: message to delete not found")
        self.screen.removed(str(chat_id), (chat_id, message_id))
        return _ok(True)

    async def _m_sendMessageDraft(self, params: dict[str, Any]) -> web.Response:
        if not int(params.get("draft_id", 0) or 0):
            return _error(400, "Bad Request: draft_id must be non-zero")
        return _ok(True)

    def _text_problem(self, text: str, params: dict[str, Any]) -> str:
        if not text.strip():
            return "Bad Request: message text is empty"
        html = str(params.get("parse_mode", "")).upper() == "HTML"
        if html:
            error = html_error(text)
            if error:
                return f"Bad Request: can't parse entities: {error}"
        if shown_length(text, html) > 4096:
            return "Bad Request: message is too long"
        return ""


async def _parts(request: web.Request) -> dict[str, Part]:
    """The file parts of a multipart body (read_params keeps only its text fields)."""
    if request.content_type != "multipart/form-data":
        return {}
    form = await request.post()  # aiohttp keeps the parsed form: read_params read it already
    return {
        key: Part(value.filename, value.content_type, value.file.read())
        for key, value in form.items()
        if isinstance(value, web.FileField)
    }


def _markup_problem(params: dict[str, Any]) -> str:
    """An inline keyboard Telegram refuses: a button's callback_data empty or over 64 bytes."""
    markup = params.get("reply_markup")
    rows = markup.get("inline_keyboard", []) if isinstance(markup, dict) else []
    for row in rows:
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= DATA_LIMIT:
                return "Bad Request: BUTTON_DATA_INVALID"
    return ""


def _image_size(data: bytes) -> tuple[int, int] | None:
    """An image's width and height, None when Pillow cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def _shown(text: str, html: bool) -> str:
    """The text Telegram shows for a caption: the tags gone, the entities resolved."""
    if not html:
        return text
    checker = _HtmlCheck()
    checker.feed(text)
    checker.close()
    return "".join(checker.text)


def _update_id(entry: Any) -> int | None:
    update_id = entry.get("update_id") if isinstance(entry, dict) else None
    return update_id if type(update_id) is int else None


def user(user_id: int = 42, first_name: str = "Ann") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name}


def chat(chat_id: int, kind: str = "private", forum: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": chat_id, "type": kind}
    if kind == "private":
        data["first_name"] = "Ann"
    else:
        data["title"] = "Test group"
    if forum:
        data["is_forum"] = True
    return data


_incoming_ids = itertools.count(5000)


def text_message(
    text: str,
    *,
    chat_id: int = 42,
    kind: str = "private",
    from_id: int = 42,
    entities: list[dict[str, Any]] | None = None,
    reply_to: dict[str, Any] | None = None,
    topic: int | None = None,
) -> dict[str, Any]:
    """An incoming message as Telegram delivers it. Commands get their bot_command entity."""
    message = _incoming(chat_id, kind, from_id, reply_to, topic)
    message["text"] = text
    _add_entities(message, "entities", text, entities)
    return message


def media_message(
    media: dict[str, Any],
    *,
    caption: str = "",
    chat_id: int = 42,
    kind: str = "private",
    from_id: int = 42,
    entities: list[dict[str, Any]] | None = None,
    reply_to: dict[str, Any] | None = None,
    topic: int | None = None,
) -> dict[str, Any]:
    """An incoming message with a file: `media` is e.g. `{"photo": tg.photo(small, big)}` or
    `{"voice": tg.voice(file_id)}`; the caption (and its entities) as Telegram sends them."""
    message = {**_incoming(chat_id, kind, from_id, reply_to, topic), **media}
    if caption:
        message["caption"] = caption
        _add_entities(message, "caption_entities", caption, entities)
    return message


def _add_entities(
    message: dict[str, Any], field: str, text: str, entities: list[dict[str, Any]] | None
) -> None:
    found = list(entities or [])
    if text.startswith("/"):
        found.append({"type": "bot_command", "offset": 0, "length": len(text.split(" ")[0])})
    if found:
        message[field] = found


def _incoming(
    chat_id: int, kind: str, from_id: int, reply_to: dict[str, Any] | None, topic: int | None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": next(_incoming_ids),
        "from": user(from_id),
        "chat": chat(chat_id, kind, forum=topic is not None),
        "date": int(time.time()),
    }
    if reply_to is not None:
        message["reply_to_message"] = reply_to
    if topic is not None:
        message["message_thread_id"] = topic
        message["is_topic_message"] = True
    return message


def mention_entity(text: str, mention: str) -> dict[str, Any]:
    """A `mention` entity for `mention` in `text`, with UTF-16 offsets as Telegram sends."""
    start = text.index(mention)
    offset = len(text[:start].encode("utf-16-le")) // 2
    return {"type": "mention", "offset": offset, "length": len(mention.encode("utf-16-le")) // 2}


def bot_message(chat_id: int, message_id: int, text: str = "earlier answer") -> dict[str, Any]:
    return {"message_id": message_id, "from": {"id": BOT_ID, "is_bot": True,
            "first_name": "Test Bot", "username": BOT_USERNAME},
            "chat": chat(chat_id, "supergroup"), "date": int(time.time()),
            "text": text}  # fmt: skip


def _message(chat_id: int, message_id: int, text: str, params: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": message_id,
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Test Bot", "username": BOT_USERNAME},
        "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
        "date": int(time.time()),
        "text": text,
    }
    if params.get("message_thread_id"):
        message["message_thread_id"] = int(params["message_thread_id"])
    if isinstance(params.get("reply_markup"), dict):
        message["reply_markup"] = params["reply_markup"]
    return message


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)
