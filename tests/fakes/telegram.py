"""A local fake of the Telegram Bot API, driven by the real python-telegram-bot.

`POST /bot<token>/<method>` with form or JSON bodies, answered as Telegram answers:
`{"ok": true, "result": ...}` with realistic Message objects, or `{"ok": false,
"error_code": ..., "description": ...}`. getUpdates long-polls for real (holds up to
`timeout`, honours `offset`). An unchanged edit and malformed HTML get Telegram's 400s,
`fail(method, ...)` injects a 429 with `parameters.retry_after`. Every call is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from tests.fakes.common import Screen, read_params, serve_locally

BOT_ID = 7000001
BOT_USERNAME = "TestChatBot"
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
             "blockquote", "tg-spoiler", "span", "tg-emoji"}  # fmt: skip


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


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
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
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

    def update(self, message: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates and return it (for webhook delivery too)."""
        return self.raw_update({"update_id": self.next_update_id(), "message": message})

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
        self.calls.append(Call(method, params))
        queued = self.failures.get(method)
        if queued:
            status, description, parameters = queued.popleft()
            return _error(status, description, parameters)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _ok(True)
        return await handler(params)

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok({"id": BOT_ID, "is_bot": True, "first_name": "Test Bot",
                    "username": BOT_USERNAME, "can_join_groups": True,
                    "can_read_all_group_messages": False,
                    "supports_inline_queries": False})  # fmt: skip

    async def _m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = str(params.get("url", ""))
        self.webhook_secret = str(params.get("secret_token", ""))
        return _ok(True)

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_url = ""
        return _ok(True)

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset", 0) or 0)
        timeout = float(params.get("timeout", 0) or 0)
        if offset:
            self.updates = [u for u in self.updates if _update_id(u) is None
                            or _update_id(u) >= offset]  # fmt: skip
        if not self.updates and timeout:
            async with self._new_update:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), timeout)
        served = list(self.updates[:100])
        self.updates = [u for u in self.updates if not (_update_id(u) is None and u in served)]
        return _ok(served)

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id, text = int(params["chat_id"]), str(params.get("text", ""))
        problem = self._text_problem(text, params)
        if problem:
            return _error(400, problem)
        message_id = next(self._message_ids)
        self.messages[(chat_id, message_id)] = text
        self.screen.posted(str(chat_id), (chat_id, message_id))
        return _ok(_message(chat_id, message_id, text, params))

    async def _m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        text = str(params.get("text", ""))
        if (chat_id, message_id) not in self.messages:
            return _error(400, "Bad Request: message to edit not found")
        if self.messages[(chat_id, message_id)] == text:
            return _error(400, "Bad Request: message is not modified: specified new message "
                               "content and reply markup are exactly the same")  # fmt: skip
        problem = self._text_problem(text, params)
        if problem:
            return _error(400, problem)
        self.messages[(chat_id, message_id)] = text
        self.screen.changed(str(chat_id))
        return _ok(_message(chat_id, message_id, text, params))

    async def _m_deleteMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
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
    message: dict[str, Any] = {
        "message_id": next(_incoming_ids),
        "from": user(from_id),
        "chat": chat(chat_id, kind, forum=topic is not None),
        "date": int(time.time()),
        "text": text,
    }
    found = list(entities or [])
    if text.startswith("/"):
        found.append({"type": "bot_command", "offset": 0, "length": len(text.split(" ")[0])})
    if found:
        message["entities"] = found
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
    return message


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)
