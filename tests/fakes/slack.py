"""A local fake of Slack: the Web API, signed Events API requests, and Socket Mode.

The Web API answers like Slack (`{"ok": true, ...}`, `{"ok": false, "error": ...}`, 429 with
`Retry-After` in whole seconds), takes form or JSON bodies and checks the bearer token. Every
call is recorded so tests assert what Slack received. `sign()` signs event bodies exactly as
Slack does (`v0=` HMAC-SHA256 of `v0:{timestamp}:{body}`). `apps.connections.open` returns
a ws:// URL on the same server, where Socket Mode envelopes are sent and acks collected.
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

from aiohttp import WSMsgType, web

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

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
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
    ):
        """The next call of `method` fails like Slack would."""
        self.failures.setdefault(method, deque()).append((status, error, retry_after))

    def calls_of(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    def texts_in(self, channel: str, thread_ts: str | None = None) -> list[str]:
        """The current text of every bot message in a channel (or thread), in order."""
        found = (self.messages[ts] for ts in self.screen.keys(channel))
        return [m["text"] for m in found if thread_ts is None or m.get("thread_ts") == thread_ts]

    async def envelope(self, payload: dict[str, Any], kind: str = "events_api") -> str:
        """Send a Socket Mode envelope to the connected bot; returns its envelope id."""
        envelope_id = f"env-{next(self._ts)}"
        message = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                   "accepts_response_payload": kind != "events_api", "retry_attempt": 0,
                   "retry_reason": ""}  # fmt: skip
        await self.sockets[-1].send_str(json.dumps(message))
        return envelope_id

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
        ts = self._new_ts()
        channel = str(params["channel"])
        self.messages[ts] = {"channel": channel, "thread_ts": params.get("thread_ts"),
                             "text": str(params.get("text", ""))}  # fmt: skip
        self.screen.posted(channel, ts)
        return {"ok": True, "channel": channel, "ts": ts,
                "message": {"type": "message", "user": BOT_USER, "bot_id": BOT_ID,
                            "text": params.get("text", ""), "ts": ts}}  # fmt: skip

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = str(params["ts"])
        if ts not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        self.messages[ts]["text"] = str(params.get("text", ""))
        self.screen.changed(self.messages[ts]["channel"])
        return {"ok": True, "channel": params["channel"], "ts": ts, "text": params.get("text")}

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
            thread_ts: str | None = None) -> dict[str, Any]:  # fmt: skip
    event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}",
             "ts": user_ts(), "channel": channel, "team": TEAM}  # fmt: skip
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(text: str, *, channel: str = "D0ANN", user: str = "U0ANN", channel_type: str = "im",
            thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    event = {"type": "message", "user": user, "text": text, "ts": user_ts(), "channel": channel,
             "channel_type": channel_type, "team": TEAM, **extra}  # fmt: skip
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event
