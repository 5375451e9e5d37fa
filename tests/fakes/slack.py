"""A local fake of Slack: the Web API, signed Events API requests, and Socket Mode.

The Web API answers like Slack (`{"ok": true, ...}`, `{"ok": false, "error": ...}`, 429 with
`Retry-After` in whole seconds), takes form or JSON bodies and checks the bearer token. Every
call is recorded so tests assert what Slack received. `sign()` signs event bodies exactly as
Slack does (`v0=` HMAC-SHA256 of `v0:{timestamp}:{body}`). `apps.connections.open` returns
a ws:// URL on the same server, where Socket Mode envelopes are sent and acks collected.

Files: `add_file()` keeps bytes the fake serves at the file object's `url_private_download`
(`/files-pri/T-F/download/name`) to the bot token only; anything else gets what Slack gives a
browser that is not signed in, a 200 HTML sign-in page (so does a token without `files:read`,
`files_read=False`). Uploads go the way `files_upload_v2` takes: `files.getUploadURLExternal`
gives an upload URL on this server, the bytes are POSTed there (raw, as slack-sdk sends them,
or multipart), and `files.completeUploadExternal` shares them; each is recorded in `uploads`.
https://docs.slack.dev/messaging/working-with-files

Interactivity: messages keep their Block Kit `blocks` (checked against Slack's limits: a bad
one is `invalid_blocks`; block ids filled in as Slack does). `press()` delivers a button press
as Slack does: a signed form POST of `payload=<block_actions JSON>` to the app's Request URL
(`request_url`, the events URL), or an `interactive` Socket Mode envelope. `chat.postEphemeral`
calls are kept in `ephemerals`, posts to a press's `response_url` in `responses`.
https://docs.slack.dev/reference/interaction-payloads/block_actions-payload
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.common import Screen, read_params, serve_locally

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
SIGNING_SECRET = "test-signing-secret"
TEAM = "T0TEST"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"


def sign(
    body: str | bytes, timestamp: int | None = None, secret: str = SIGNING_SECRET
) -> dict[str, str]:
    """The headers Slack sends with a request body (bytes too: a signed body need not be
    UTF-8)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    raw = body if isinstance(body, bytes) else body.encode()
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


SIGN_IN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in</body></html>"


@dataclass
class FakeFile:
    """A file in the workspace: its bytes and its Slack file object."""

    data: bytes
    info: dict[str, Any]
    fail_status: int = 0  # a download answers this status instead (0: serves the file)


@dataclass
class Upload:
    """A file the bot posted, as `files.completeUploadExternal` shared it."""

    file_id: str
    filename: str
    title: str
    data: bytes
    channel: str
    thread_ts: str | None
    initial_comment: str | None


@dataclass
class Download:
    """One GET of a file URL: which file, and whether it carried the bot token."""

    path: str
    authorized: bool


@dataclass
class Ephemeral:
    """A message only `user` sees (`chat.postEphemeral`, or a press's `response_url`)."""

    channel: str
    user: str
    text: str
    thread_ts: str | None = None


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    peer: tuple[str, int] | None = None  # the client's address: one per TCP connection


class FakeSlack:
    """`async with FakeSlack() as slack:`; `slack.api_url` is the bot's SLACK_API_URL."""

    def __init__(self, *, streaming: bool = True) -> None:
        self.streaming = streaming  # whether chat.startStream & co. exist in this workspace
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # ts -> {"channel", "thread_ts", "text"}
        self.screen = Screen()
        self.failures: dict[str, deque[tuple[int, str, int]]] = {}
        self.delays: dict[str, float] = {}  # method -> seconds before it answers
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self.files: dict[str, FakeFile] = {}  # file id -> file
        self.files_read = True  # the bot token's files:read scope
        self.downloads: list[Download] = []
        self.uploads: list[Upload] = []
        self._pending: dict[str, dict[str, Any]] = {}  # upload key -> {file_id, filename, ...}
        self._file_ids = itertools.count(1)
        self.request_url = ""  # the app's Request URL, where presses are POSTed
        self.ephemerals: list[Ephemeral] = []
        self.responses: list[dict[str, Any]] = []  # JSON posted to a response_url
        self._response_urls: dict[str, tuple[str, str]] = {}  # key -> (channel, user)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{key}/{rest:.+}", self._download)
        app.router.add_post("/upload/v1/{key}", self._upload)
        app.router.add_post("/actions/{key}", self._response_url)
        self._runner, self.port = await serve_locally(app, shutdown_timeout=0.2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in self.sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests use -------------------------------------------------------------

    def fail(
        self, method: str, error: str = "ratelimited", status: int = 429, retry_after: int = 1
    ) -> None:
        """The next call of `method` fails like Slack would."""
        self.failures.setdefault(method, deque()).append((status, error, retry_after))

    def calls_of(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def texts_in(self, channel: str, thread_ts: str | None = None) -> list[str]:
        """The current text of every bot message in a channel (or thread), in order."""
        found = (self.messages[str(ts)] for ts in self.screen.keys(channel))
        return [m["text"] for m in found if thread_ts is None or m.get("thread_ts") == thread_ts]

    def add_file(
        self, data: bytes, name: str, mimetype: str, *, filetype: str = "", **extra: Any
    ) -> dict[str, Any]:
        """Keep a file a user uploaded; returns its file object, as events carry it."""
        file_id = f"F{next(self._file_ids):08d}"
        base = f"http://127.0.0.1:{self.port}/files-pri/{TEAM}-{file_id}"
        info = {"id": file_id, "created": int(time.time()), "timestamp": int(time.time()),
                "name": name, "title": name, "mimetype": mimetype,
                "filetype": filetype or name.rpartition(".")[2].lower(), "user": "U0ANN",
                "user_team": TEAM, "editable": False, "size": len(data), "mode": "hosted",
                "is_external": False, "external_type": "", "is_public": False,
                "public_url_shared": False, "display_as_bot": False, "username": "",
                "url_private": f"{base}/{quote(name)}",
                "url_private_download": f"{base}/download/{quote(name)}",
                "permalink": f"https://test.slack.com/files/U0ANN/{file_id}/{quote(name)}",
                "file_access": "visible", **extra}  # fmt: skip
        self.files[file_id] = FakeFile(data, info)
        return info

    def fail_download(self, file_id: str, status: int = 500) -> None:
        """Downloads of the file answer `status` from now on."""
        self.files[file_id].fail_status = status

    def uploads_in(self, channel: str, thread_ts: str | None = None) -> list[Upload]:
        return [u for u in self.uploads if u.channel == channel and u.thread_ts == thread_ts]

    async def envelope(self, payload: dict[str, Any], kind: str = "events_api") -> str:
        """Send a Socket Mode envelope to the connected bot; returns its envelope id."""
        envelope_id = f"env-{next(self._ts)}"
        message = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                   "accepts_response_payload": kind != "events_api", "retry_attempt": 0,
                   "retry_reason": ""}  # fmt: skip
        await self.sockets[-1].send_str(json.dumps(message))
        return envelope_id

    def blocks_of(self, ts: str) -> list[dict[str, Any]]:
        return list(self.messages[ts].get("blocks") or [])

    def buttons_of(self, ts: str) -> list[dict[str, Any]]:
        """The buttons a message shows now."""
        actions = [b for b in self.blocks_of(ts) if b.get("type") == "actions"]
        return [e for b in actions for e in b.get("elements", []) if e.get("type") == "button"]

    def ephemerals_to(self, user: str) -> list[str]:
        return [e.text for e in self.ephemerals if e.user == user]

    async def press(
        self, ts: str, action_id: str, *, user: str = "U0ANN", name: str = "ann",
        socket: bool = False,
    ) -> int:  # fmt: skip
        """`user` presses the button `action_id` of the bot's message `ts`; the HTTP status
        the app answered (200 for a Socket Mode envelope once sent)."""
        message = self.messages[ts]
        [button] = [b for b in self.buttons_of(ts) if b["action_id"] == action_id]
        [block] = [b for b in self.blocks_of(ts) if button in b.get("elements", [])]
        channel, thread_ts = message["channel"], message.get("thread_ts")
        container = {"type": "message", "message_ts": ts, "channel_id": channel,
                     "is_ephemeral": False}  # fmt: skip
        shown = {"type": "message", "subtype": "bot_message", "user": BOT_USER,
                 "bot_id": BOT_ID, "app_id": "A0TEST", "team": TEAM, "ts": ts,
                 "text": message["text"], "blocks": message.get("blocks") or []}  # fmt: skip
        if thread_ts:
            container["thread_ts"] = shown["thread_ts"] = thread_ts
        pressed = {"action_id": action_id, "block_id": block["block_id"], "text": button["text"],
                   "value": button.get("value", ""), "style": button.get("style"),
                   "type": "button", "action_ts": f"{time.time():.6f}"}  # fmt: skip
        is_dm = channel.startswith("D")
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user, "username": name, "name": name, "team_id": TEAM},
            "api_app_id": "A0TEST",
            "token": "verification-token-unused",
            "container": container,
            "trigger_id": f"{next(self._ts)}.1234567890.abcdef0123456789",
            "team": {"id": TEAM, "domain": "test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "directmessage" if is_dm else "general"},
            "message": shown,
            "state": {"values": {}},
            "response_url": self.response_url(channel, user),
            "actions": [pressed],
        }
        if socket:
            await self.envelope(payload, kind="interactive")
            return 200
        body = urlencode({"payload": json.dumps(payload)})
        headers = {**sign(body), "Content-Type": "application/x-www-form-urlencoded"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.request_url, data=body, headers=headers) as response,
        ):
            return response.status

    def response_url(self, channel: str, user: str) -> str:
        """A `response_url` as Slack gives with a press or a slash command in `channel`:
        what is posted there is kept in `responses` (an ephemeral one in `ephemerals`)."""
        key = f"act{next(self._ts)}"
        self._response_urls[key] = (channel, user)
        return f"http://127.0.0.1:{self.port}/actions/{key}"

    async def _response_url(self, request: web.Request) -> web.Response:
        """A press's `response_url`: JSON in, `ok` out (Slack's answer, as text)."""
        found = self._response_urls.get(request.match_info["key"])
        if found is None:
            return web.Response(status=404, text="no_service")
        data = await request.json()
        self.responses.append(data)
        if data.get("response_type") == "ephemeral" and not data.get("replace_original"):
            self.ephemerals.append(Ephemeral(found[0], found[1], str(data.get("text", ""))))
        return web.Response(text="ok")

    # --- the Web API ----------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        # Slack takes arguments in the query string too (slack-sdk sends some methods so)
        params = {**request.query, **await read_params(request)}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.calls.append(Call(method, params, peer=tuple(peer) if peer else None))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method in self.delays:
            await asyncio.sleep(self.delays[method])  # a slow Slack
        queued = self.failures.get(method)
        if queued:
            status, error, retry_after = queued.popleft()
            headers = {"Retry-After": str(retry_after)} if status == 429 else {}
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        if method.startswith("chat.") and "Stream" in method and not self.streaming:
            return web.json_response({"ok": False, "error": "unknown_method"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": True})
        return web.json_response(handler(params))

    def _new_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://test.slack.com/", "team": "Test", "user": "chatbot",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID,
                "is_enterprise_install": False}  # fmt: skip

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"}

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        if not str(params.get("text", "")).strip() and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        blocks = _blocks(params)
        if blocks is None:
            return {"ok": False, "error": "invalid_blocks"}
        ts = self._new_ts()
        channel = str(params["channel"])
        self.messages[ts] = {"channel": channel, "thread_ts": params.get("thread_ts"),
                             "text": str(params.get("text", "")), "blocks": blocks}  # fmt: skip
        self.screen.posted(channel, ts)
        return {"ok": True, "channel": channel, "ts": ts,
                "message": {"type": "message", "user": BOT_USER, "bot_id": BOT_ID,
                            "text": params.get("text", ""), "ts": ts}}  # fmt: skip

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = str(params["ts"])
        if ts not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        blocks = _blocks(params)
        if blocks is None:
            return {"ok": False, "error": "invalid_blocks"}
        if "blocks" in params:  # without them, the message keeps its blocks
            self.messages[ts]["blocks"] = blocks
        self.messages[ts]["text"] = str(params.get("text", ""))
        self.screen.changed(self.messages[ts]["channel"])
        return {"ok": True, "channel": params["channel"], "ts": ts, "text": params.get("text")}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("user") or not params.get("channel"):
            return {"ok": False, "error": "invalid_arguments"}
        if not str(params.get("text", "")).strip() and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        self.ephemerals.append(Ephemeral(str(params["channel"]), str(params["user"]),
                                         str(params.get("text", "")),
                                         params.get("thread_ts") or None))  # fmt: skip
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = str(params["ts"])
        message = self.messages.pop(ts, None)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self.screen.removed(message["channel"], ts)
        return {"ok": True, "channel": params["channel"], "ts": ts}

    def _m_chat_startStream(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = self._new_ts()
        channel = str(params["channel"])
        self.messages[ts] = {"channel": channel, "thread_ts": params.get("thread_ts"),
                             "text": str(params.get("markdown_text", "") or ""),
                             "streaming": True}  # fmt: skip
        self.screen.posted(channel, ts)
        return {"ok": True, "channel": channel, "ts": ts}

    def _m_chat_appendStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(params["ts"]))
        if message is None or not message.get("streaming"):
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message["text"] += str(params.get("markdown_text", "") or "")
        self.screen.changed(message["channel"])
        return {"ok": True, "channel": params["channel"], "ts": params["ts"]}

    def _m_chat_stopStream(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(params["ts"]))
        if message is None or not message.get("streaming"):
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message["text"] += str(params.get("markdown_text", "") or "")
        message["streaming"] = False
        self.screen.changed(message["channel"])
        return {"ok": True, "channel": params["channel"], "ts": params["ts"],
                "message": {"text": message["text"]}}  # fmt: skip

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users", ""))
        if not users or "," in users:
            return {"ok": False, "error": "users_list_not_supplied" if not users else "not_im"}
        return {"ok": True, "channel": {"id": f"D{users}"}}

    # --- files ----------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.Response:
        authorized = request.headers.get("Authorization") == f"Bearer {BOT_TOKEN}"
        self.downloads.append(Download(request.path, authorized))
        file_id = request.match_info["key"].removeprefix(f"{TEAM}-")
        file = self.files.get(file_id)
        if not authorized or not self.files_read:  # what Slack shows a browser not signed in
            return web.Response(body=SIGN_IN_PAGE, content_type="text/html")
        if file is None:
            return web.Response(status=404, text="Not Found")
        if file.fail_status:
            return web.Response(status=file.fail_status, text="Something went wrong")
        return web.Response(body=file.data, content_type=file.info["mimetype"])

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        filename, length = str(params.get("filename") or ""), str(params.get("length") or "")
        if not filename or not length.isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        key = f"up{next(self._ts)}"
        file_id = f"F{next(self._file_ids):08d}"
        self._pending[key] = {"file_id": file_id, "filename": filename, "length": int(length)}
        return {"ok": True, "upload_url": f"http://127.0.0.1:{self.port}/upload/v1/{key}",
                "file_id": file_id}  # fmt: skip

    async def _upload(self, request: web.Request) -> web.Response:
        """The upload URL: the bytes raw (as slack-sdk posts them) or as a multipart file."""
        pending = self._pending.get(request.match_info["key"])
        if pending is None:
            return web.Response(status=404, text="Not Found")
        if request.content_type.startswith("multipart/"):
            data = b""
            async for part in await request.multipart():
                if isinstance(part, BodyPartReader) and part.filename is not None:
                    data = await part.read()
        else:
            data = await request.read()
        if len(data) != pending["length"]:
            return web.Response(status=400, text="length mismatch")
        pending["data"] = data
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        if isinstance(files, str):  # slack-sdk sends arguments in the query string
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        by_id = {p["file_id"]: (k, p) for k, p in self._pending.items() if "data" in p}
        shared = []
        for item in files:
            found = by_id.get(str(item.get("id")))
            if found is None:
                return {"ok": False, "error": "file_not_found"}
            key, pending = found
            del self._pending[key]
            channel = str(params.get("channel_id") or "")
            upload = Upload(pending["file_id"], pending["filename"],
                            str(item.get("title") or pending["filename"]), pending["data"],
                            channel, params.get("thread_ts") or None,
                            params.get("initial_comment") or None)  # fmt: skip
            self.uploads.append(upload)
            if channel:
                self.screen.changed(channel)
            shared.append({"id": upload.file_id, "name": upload.filename, "title": upload.title,
                           "size": len(upload.data)})  # fmt: skip
        return {"ok": True, "files": shared}

    # --- Socket Mode ----------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                          "connection_info": {"app_id": "A0TEST"}}))  # fmt: skip
        self.connected.set()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
        return socket


_block_ids = itertools.count(1)
SECTION_TEXT, BUTTON_TEXT, BUTTON_VALUE, ACTION_ID, MAX_BLOCKS = 3000, 75, 2000, 255, 50


def _blocks(params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The message's blocks, block ids filled in, or None where Slack says `invalid_blocks`
    (the limits of https://docs.slack.dev/reference/block-kit/blocks)."""
    blocks = params.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return None
    for block in blocks:
        if block.get("type") == "section":
            text = block.get("text") or {}
            if not 1 <= len(str(text.get("text", ""))) <= SECTION_TEXT:
                return None
        elif block.get("type") == "actions":
            for element in block.get("elements", []):
                label = str((element.get("text") or {}).get("text", ""))
                if (element.get("type") != "button" or not 1 <= len(label) <= BUTTON_TEXT
                        or len(str(element.get("value", ""))) > BUTTON_VALUE
                        or not 1 <= len(str(element.get("action_id", ""))) <= ACTION_ID
                        or element.get("style") not in (None, "primary", "danger")):  # fmt: skip
                    return None
        block.setdefault("block_id", f"b{next(_block_ids)}")
    return blocks


_event_ids = itertools.count(1)


def event_body(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """An Events API `event_callback` body around `event`."""
    return {
        "token": "verification-token-unused",
        "team_id": TEAM,
        "api_app_id": "A0TEST",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


_user_ts = itertools.count(1)


def user_ts() -> str:
    return f"1690000000.{next(_user_ts):06d}"


def mention(text: str, *, channel: str = "C0GENERAL", user: str = "U0ANN",
            thread_ts: str | None = None,
            files: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    event: dict[str, Any] = {"type": "app_mention", "user": user,
                             "text": f"<@{BOT_USER}> {text}", "ts": user_ts(),
                             "channel": channel, "team": TEAM}  # fmt: skip
    if thread_ts:
        event["thread_ts"] = thread_ts
    if files:  # a mention posted with files carries them too
        event.update(files=files, upload=False)
    return event


def message(text: str, *, channel: str = "D0ANN", user: str = "U0ANN", channel_type: str = "im",
            thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    event = {"type": "message", "user": user, "text": text, "ts": user_ts(), "channel": channel,
             "channel_type": channel_type, "team": TEAM, **extra}  # fmt: skip
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def file_share(text: str, files: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A message with files (`subtype: file_share`): in a DM unless `channel`/`channel_type`
    say otherwise; `message()`'s options."""
    return message(text, subtype="file_share", files=files, upload=False, display_as_bot=False,
                   **options)  # fmt: skip
