"""The web channel: a chat page and an HTTP + WebSocket API on the bot's one aiohttp server.

A thin adapter like the others: a request becomes a `Message` (platform `web`; the JWT's
`sub` is the user and the workspace, the client's conversation id the channel, so no scope
ever mixes two users), and the core's reply stream becomes server-sent events, WebSocket
frames or one JSON answer. Files come and go as base64 in that same JSON
(adapters/web_files.py). The page is static (`adapters/web_static/`); the API is
documented in docs/web.md. A client's message id is the delivery id: a retried request is
answered once, and gets the first one's final text (kept for `redis.dedupe_ttl` seconds).
A tool that needs a person's yes posts an `approval` event; the press (`POST
/api/approvals/{id}` or a `decide` frame) is answered by the core's notice or settled text, and
the continued answer streams back in the response to the press (see `WebPress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from aiohttp import WSMsgType, web

from adapters.web_files import TooLarge, Uploads, body_limit, file_event, files_size
from adapters.web_files import read_attachments as _read_attachments
from core.config import Settings
from core.model import (
    ApprovalRequest,
    Attachment,
    ContextKey,
    Conversation,
    Decision,
    Message,
    MessageRef,
    OutgoingFile,
    User,
    parse_command,
)
from core.protocols import DecisionHandler, FetchError, Handler, Responder
from core.storage import CacheEntry
from core.tools.approvals import GONE

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("web_static")
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ID = 128
RETRY_WAIT = 60.0  # seconds a retry waits for the first request's answer in another process
RETRY_POLL = 0.2
SEND_TIMEOUT = 10.0  # seconds a client may take to read one event before it is dropped
PER_SOCKET = 8  # messages in flight on one WebSocket
MAX_SOCKETS = 1000
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # the page's own meta CSP cannot forbid framing; a header can
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


class Conversations(Protocol):
    """What the web channel reads and changes outside a turn (the store port's part)."""

    async def load(self, key: ContextKey, *, channel: ContextKey | None = None) -> Conversation: ...

    async def reset(self, key: ContextKey) -> None: ...

    async def cached(self, key: str) -> str | None: ...

    async def remember(self, entry: CacheEntry) -> None: ...


class Unauthorized(Exception):
    """No valid token: the message is safe to send to the client."""


@dataclass(frozen=True, slots=True)
class WebUser:
    id: str
    name: str = ""
    expires: float | None = None  # the token's `exp` (a WebSocket closes then)


class TokenCheck:
    """`Authorization: Bearer <JWT>`: HS256 with `WEB_JWT_SECRET`, `sub` and `exp` required.
    Without a secret (`chatbot web`, local only) every call is the one local user's."""

    def __init__(self, secret: str | None, local_user: str = "local") -> None:
        self.secret = secret
        self.local_user = local_user

    def user(self, token: str | None) -> WebUser:
        if self.secret is None:
            return WebUser(self.local_user, self.local_user)
        if not token:
            raise Unauthorized("a bearer token is required")
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not valid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("the token has no user (sub)")
        name = claims.get("name")
        return WebUser(sub, name if isinstance(name, str) else "", float(claims["exp"]))

    def from_request(self, request: web.Request) -> WebUser:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if header and scheme.lower() != "bearer":
            raise Unauthorized("use Authorization: Bearer <token>")
        # a query token only where a header cannot be set (a browser's WebSocket): elsewhere
        # it would end up in proxies' access logs
        query = request.query.get("token") if request.path == "/api/ws" else None
        return self.user(token.strip() or query)


Sink = Callable[[str, dict[str, str]], Awaitable[None]]
"""Sends one event (`delta`, `file` or `done`) to the client; raises ConnectionError once it
left."""


class WebResponder:
    """The core's reply stream as deltas; the whole answer is the final text of every part.
    Holds the turn's uploads (the only copy of their bytes) and sends files as `file` events;
    without a sink (JSON mode, `keep_files`) the files (and approval requests) wait for the
    final answer."""

    limit = 1_000_000  # one part: the page renders any length
    typing_interval = 0.0

    def __init__(
        self,
        sink: Sink | None,
        edit_interval: float,
        uploads: Mapping[str, bytes] | None = None,
        *,
        keep_files: bool = False,
    ) -> None:
        self.sink = sink
        self.edit_interval = edit_interval
        self.parts: dict[str, str] = {}  # in the order they were sent
        self.uploads = dict(uploads or {})  # handle -> bytes, for this turn only
        self.files: list[dict[str, str]] = []  # JSON mode: what the answer's `files` lists
        self.approvals: list[dict[str, str]] = []  # JSON mode: the answer's `approvals`
        self.answered = False  # something reached the client: text, a file, an approval
        self._keep_files = keep_files
        self._shown = ""  # what the client has, as the concatenation of its deltas
        self._ids = itertools.count(1)

    def measure(self, text: str) -> int:
        return len(text)

    @property
    def answer(self) -> str:
        return "\n\n".join(text for text in self.parts.values() if text)

    async def send(self, text: str, *, final: bool) -> MessageRef:
        ref = MessageRef(str(next(self._ids)))
        self.parts[ref.id] = text
        await self._delta()
        return ref

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        self.parts[ref.id] = text
        await self._delta()

    async def delete(self, ref: MessageRef) -> None:
        self.parts.pop(ref.id, None)  # the final text follows; `done` carries the truth

    async def typing(self) -> None:
        return None

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes that came with the message (after a crash, or after the turn, gone)."""
        data = self.uploads.get(attachment.handle)
        if data is None:
            raise FetchError("the upload is no longer available")
        if len(data) > max_bytes:
            raise FetchError(f"the file is larger than {max_bytes} bytes")
        return data

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        """A `file` event now, between the deltas; in JSON mode, a `files` entry."""
        ref = MessageRef(f"file-{next(self._ids)}")
        self.answered = True
        event = file_event(file)
        if self._keep_files:
            self.files.append(event)
        await self._emit("file", event)
        return ref

    def extras(self) -> dict[str, list[dict[str, str]]]:
        """What a JSON answer carries beside its text (kept in JSON mode only)."""
        return {
            name: items
            for name, items in (("files", self.files), ("approvals", self.approvals))
            if items
        }

    async def _delta(self) -> None:
        now = self.answer
        if not now.startswith(self._shown) or now == self._shown:
            return  # rewritten behind what was shown: `done` sends the whole text
        piece, self._shown = now[len(self._shown) :], now
        await self._emit("delta", {"text": piece})

    async def done(self) -> None:
        await self._emit("done", {"text": self.answer})

    async def _emit(self, event: str, data: dict[str, str]) -> None:
        if self.sink is None:
            return
        try:
            await asyncio.wait_for(self.sink(event, data), SEND_TIMEOUT)
        except (ConnectionError, RuntimeError, TimeoutError):
            self.sink = None  # the client left or stopped reading: the answer is still saved


class WebApprover(WebResponder):
    """A `WebResponder` that can ask for approvals (when the adapter has an `on_decision`):
    an `approval` event `{"id", "text" (Markdown), "tool"}` between the deltas; in JSON mode,
    an entry of the answer's `approvals`."""

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        event = {"id": request.id, "text": request.text, "tool": request.tool}
        self.answered = True
        if self._keep_files:
            self.approvals.append(event)
        await self._emit("approval", event)
        return MessageRef(f"approval-{request.id}")


class WebPress:
    """One press's `DecisionReply`. The web has no message to edit: what the core says is
    what the press is answered with. `said` is set at the core's first word (or when it ends
    without one), so a POST answers a notice as an error (403 not yours, 410 gone) and a
    settled request as 200 with the continued answer; on a WebSocket each word is a frame."""

    def __init__(self, decision: Decision, frames: Sink | None = None) -> None:
        self.decision = decision
        self.frames = frames
        self.notices: list[str] = []
        self.settled: str | None = None
        self.failed = False  # the decision raised (logged; the client gets a short error)
        self.said = asyncio.Event()

    @property
    def outcome(self) -> str:
        """approved, denied or expired: the core says it only in its settled text."""
        if self.settled is not None and self.settled.startswith("⌛"):
            return "expired"
        return "approved" if self.decision.approve else "denied"

    @property
    def status(self) -> int:
        """What a POST answers when the request was not settled."""
        if self.failed or not self.notices:
            return 500
        return 410 if self.notices[0] == GONE else 403

    async def notice(self, text: str) -> None:
        self.notices.append(text)
        self.said.set()
        await self._frame("notice", {"id": self.decision.approval_id, "text": text})

    async def settle(self, text: str) -> None:
        self.settled = text
        self.said.set()
        data = {"id": self.decision.approval_id, "text": text, "outcome": self.outcome}
        await self._frame("settled", data)

    async def _frame(self, event: str, data: dict[str, str]) -> None:
        if self.frames is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.frames(event, data)


class WebAdapter:
    """Mounts `/`, `/static/`, `/api/...` and `/api/ws` on the bot's aiohttp server."""

    name = "web"

    def __init__(
        self,
        handler: Handler,
        conversations: Conversations,
        settings: Settings,
        *,
        jwt_secret: str | None,
        local_user: str = "local",
        on_decision: DecisionHandler | None = None,
    ) -> None:
        self.handler = handler
        self.on_decision = on_decision  # None: tools that need a yes are not run here
        self.conversations = conversations
        self.settings = settings
        self.web = settings.platforms.web
        self.auth = TokenCheck(jwt_secret, local_user)
        self.edit_interval = settings.edit_interval("web")
        self.max_bytes = settings.media.max_bytes  # one attached file
        self.body_limit = body_limit(self.web.max_body, self.max_bytes)  # with MAX_FILES files
        self._running: dict[str, asyncio.Future[str]] = {}  # retried ids in this process
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sockets: dict[web.WebSocketResponse, Any] = {}  # -> its transport
        self._open = False

    # --- the Adapter protocol ---

    def mount(self, app: web.Application) -> None:
        app.middlewares.append(self._api_errors)
        app.router.add_get("/", self._page)
        app.router.add_static("/static/", STATIC, append_version=True)
        app.router.add_get("/api/ws", self._socket)
        app.router.add_get("/api/conversations/{cid}/messages", self._history)
        app.router.add_post("/api/conversations/{cid}/messages", self._post)
        app.router.add_delete("/api/conversations/{cid}", self._forget)
        app.router.add_post("/api/approvals/{aid}", self._decide_post)
        app.router.add_route("*", "/api/{tail:.*}", self._not_found)

    async def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self._open = False
        await asyncio.gather(*(self._close(ws, t) for ws, t in list(self._sockets.items())))

    @staticmethod
    async def _close(ws: web.WebSocketResponse, transport: Any) -> None:
        """Close a socket; one whose client stopped reading is cut after a moment."""
        try:
            await asyncio.wait_for(ws.close(code=1001, message=b"the bot is restarting"), 2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            if transport is not None:
                transport.abort()

    async def close(self) -> None:
        """Answers and presses still running get `server.shutdown_grace` seconds (a press's
        approval is already taken: cut, its answer would be lost), then are cancelled."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.server.shutdown_grace)
        for task in list(self._tasks):
            task.cancel()

    def ready(self) -> bool:
        return self._open

    def responder_for(self, message: Message) -> WebResponder:
        """After a crash: answered into the history (the client reads it back there); the
        uploads died with the process, so `fetch` says so; no approval can be asked (nobody
        would see its buttons). (A press's continued answer goes to the press's own response
        instead: `_decide`.)"""
        return WebResponder(None, self.edit_interval)

    def _responder(
        self, sink: Sink | None, uploads: Mapping[str, bytes] | None = None, *, keep: bool = False
    ) -> WebResponder:
        kind = WebApprover if self.on_decision is not None else WebResponder
        return kind(sink, self.edit_interval, uploads, keep_files=keep)

    # --- requests ---

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, "no such endpoint")

    async def _history(self, request: web.Request) -> web.Response:
        user, cid = self.auth.from_request(request), _conversation_id(request)
        conversation = await self.conversations.load(self._conversation(user, cid))
        messages = [
            {"role": turn.role, "text": turn.content}
            for turn in conversation.history
            if turn.role in ("user", "assistant")
        ]
        return web.json_response({"messages": messages})

    async def _forget(self, request: web.Request) -> web.Response:
        user, cid = self.auth.from_request(request), _conversation_id(request)
        await self.conversations.reset(self._conversation(user, cid))
        return web.Response(status=204)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        user, cid = self.auth.from_request(request), _conversation_id(request)
        body = await self._json_body(request)
        text, client_id = _message_fields(body)
        try:
            uploads = await self._uploads(body)
        except TooLarge as exc:
            raise web.HTTPRequestEntityTooLarge(self.max_bytes, reason=str(exc)) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        if not self._open:
            return _error(503, "the bot is restarting; try again in a moment")
        if "text/event-stream" not in request.headers.get("Accept", ""):
            answer, extras = await self._answer(user, cid, text, client_id, None, uploads)
            return web.json_response({"text": answer, **extras})
        stream = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        _allow_origin(request, stream, self.web.allowed_origins)  # sent before the middleware
        await stream.prepare(request)

        async def sink(event: str, data: dict[str, str]) -> None:
            payload = json.dumps(data, ensure_ascii=False)
            await stream.write(f"event: {event}\ndata: {payload}\n\n".encode())

        try:
            await self._answer(user, cid, text, client_id, sink, uploads)
        except RetryPending as exc:  # the stream has begun: the error goes in it
            with contextlib.suppress(ConnectionError, RuntimeError):
                await sink("error", {"error": str(exc)})
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stream.write_eof()
        return stream

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        user = self.auth.from_request(request)
        if len(self._sockets) >= MAX_SOCKETS:
            return _error(503, "too many open sockets; try again shortly")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=self.body_limit)
        await ws.prepare(request)
        self._sockets[ws] = request.transport
        expiry = None
        if user.expires is not None:  # a socket does not outlive its token
            delay = max(0.0, user.expires - time.time())
            expiry = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(ws.close(code=4001, message=b"the token expired"))
            )
        sending = asyncio.Lock()
        in_flight = [0]

        async def send(frame: dict[str, str]) -> None:
            async with sending:
                await ws.send_json(frame)

        def release(_: object) -> None:
            in_flight[0] -= 1

        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                try:
                    data = await _parse_json(frame.data)
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("type") == "decide":
                    if in_flight[0] >= PER_SOCKET:
                        await send(_busy(str(data.get("id", ""))[:MAX_ID]))
                        continue
                    in_flight[0] += 1
                    self._spawn(self._socket_decide(user, data, send)).add_done_callback(release)
                    continue
                try:
                    cid, text, client_id = _socket_message(data)
                except ValueError as exc:
                    await send({"type": "error", "id": "", "error": str(exc)})
                    continue
                if in_flight[0] >= PER_SOCKET:
                    await send(_busy(client_id))
                    continue
                try:
                    if len(frame.data) - files_size(data) > self.web.max_body:
                        raise ValueError(f"a message may have {self.web.max_body} bytes")
                    uploads = await self._uploads(data)
                except ValueError as exc:  # a file too large, too many, not base64
                    await send({"type": "error", "id": client_id, "error": str(exc)})
                    continue
                in_flight[0] += 1
                task = self._spawn(self._socket_turn(user, cid, text, client_id, uploads, send))
                task.add_done_callback(release)
        finally:
            self._sockets.pop(ws, None)
            if expiry is not None:
                expiry.cancel()
        return ws

    async def _socket_turn(
        self,
        user: WebUser,
        cid: str,
        text: str,
        client_id: str,
        uploads: Uploads,
        send: Callable[[dict[str, str]], Awaitable[None]],
    ) -> None:
        async def sink(event: str, data: dict[str, str]) -> None:
            await send(_frame(event, client_id, data))

        try:
            await self._answer(user, cid, text, client_id, sink, uploads)
        except RetryPending as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await send({"type": "error", "id": client_id, "error": str(exc)})

    # --- approvals ---

    async def _decide_post(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/approvals/{id}` `{"approve": bool}`: the token's user decides. A notice
        is the error (403, 410); a settled request is 200 with the continued answer, as SSE
        (`settled`, then `delta`, `file`, `approval`, `done`) or as JSON."""
        user = self.auth.from_request(request)
        approval_id = request.match_info["aid"]
        if len(approval_id) > MAX_ID:
            raise web.HTTPBadRequest(reason=f"an approval id has at most {MAX_ID} characters")
        approve = _approve_field(await self._json_body(request, files=False))
        if self.on_decision is None:
            return _error(404, "approvals are not enabled here")
        if not self._open:
            return _error(503, "the bot is restarting; try again in a moment")
        streamed = "text/event-stream" in request.headers.get("Accept", "")
        stream = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        opened, gone = asyncio.Event(), [False]

        async def sink(event: str, data: dict[str, str]) -> None:
            await opened.wait()  # the answer waits for the response's head and `settled`
            if gone[0]:
                raise ConnectionError("the press's request is gone")
            payload = json.dumps(data, ensure_ascii=False)
            await stream.write(f"event: {event}\ndata: {payload}\n\n".encode())

        press = WebPress(self._decision(user, approval_id, approve))
        responder = self._responder(sink if streamed else None, keep=not streamed)
        task = self._spawn(self._decide(press, responder))
        try:
            await asyncio.shield(press.said.wait())
            if press.settled is None:
                shown = press.notices[0] if press.notices else "the decision failed; try again"
                return _error(press.status, shown)
            if not streamed:
                await asyncio.shield(task)
                return web.json_response({
                    "outcome": press.outcome, "settled": press.settled,
                    "text": responder.answer, **responder.extras(),
                })  # fmt: skip
            _allow_origin(request, stream, self.web.allowed_origins)
            await stream.prepare(request)
            settled = {"id": approval_id, "text": press.settled, "outcome": press.outcome}
            payload = json.dumps(settled, ensure_ascii=False)
            await stream.write(f"event: settled\ndata: {payload}\n\n".encode())
            opened.set()
            await asyncio.shield(task)
            if press.failed:
                await sink("error", {"error": "the answer could not be continued"})
            else:
                await responder.done()
            await stream.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client left: the answer goes on into the history
        finally:
            if not opened.is_set():  # no stream to write to: a waiting sink gives up
                gone[0] = True  # rather than hold the conversation
                opened.set()
        return stream

    async def _socket_decide(
        self, user: WebUser, data: dict[str, Any], send: Callable[[dict[str, str]], Awaitable[None]]
    ) -> None:
        """A `decide` frame: `notice` / `settled` frames, then the continued answer as frames
        whose `id` is the approval's."""
        approval_id, approve = data.get("id"), data.get("approve")
        if not isinstance(approval_id, str) or not approval_id or len(approval_id) > MAX_ID:
            await send({"type": "error", "id": "", "error": "id: the approval's id"})
            return
        if not isinstance(approve, bool):
            await send({"type": "error", "id": approval_id, "error": "approve: true or false"})
            return
        if self.on_decision is None:
            await send({"type": "error", "id": approval_id,
                        "error": "approvals are not enabled here"})  # fmt: skip
            return

        async def sink(event: str, frame: dict[str, str]) -> None:
            await send(_frame(event, approval_id, frame))

        press = WebPress(self._decision(user, approval_id, approve), sink)
        responder = self._responder(sink)
        await self._decide(press, responder)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if press.failed:
                await send({"type": "error", "id": approval_id,
                            "error": "the decision failed; try again"})  # fmt: skip
            elif press.settled is not None:
                await responder.done()

    def _decision(self, user: WebUser, approval_id: str, approve: bool) -> Decision:
        admin = user.id in self.web.admins
        return Decision(approval_id, approve, User(user.id, user.name or user.id, admin), "web")

    async def _decide(self, press: WebPress, responder: WebResponder) -> None:
        """Run the core's decision; the continued answer goes to this press's responder
        (the client that pressed), not to `responder_for`'s history-only one."""
        assert self.on_decision is not None

        def continued(message: Message) -> Responder:
            return responder

        try:
            await self.on_decision(press.decision, press, continued)
        except Exception as exc:  # logged; never a stack trace to the client
            press.failed = True
            log.error("an approval decision failed: %s", type(exc).__name__)
        finally:
            press.said.set()

    # --- the answer ---

    async def _answer(
        self,
        user: WebUser,
        cid: str,
        text: str,
        client_id: str,
        sink: Sink | None,
        uploads: Uploads,
    ) -> tuple[str, dict[str, list[dict[str, str]]]]:
        """Run the turn (detached from the request: a client that leaves does not cancel it)
        and return the whole answer and, without a sink, the files sent and approvals asked
        (`extras`); a retried id gets the first request's answer (its text: files and
        approval requests go to the first request only)."""
        # JSON, not a join: ids may hold any character, and two users' keys must never meet
        delivery = json.dumps([user.id, cid, client_id]) if client_id else ""
        running = self._running.get(delivery) if delivery else None
        if running is not None:  # the first request is still being answered here
            answer = await asyncio.shield(running)
            await _replay(sink, answer)
            if sink is not None:  # the client waits for its `done`, as after a turn
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await sink("done", {"text": answer})
            return answer, {}
        responder = self._responder(sink, uploads.data, keep=sink is None)
        message = Message(
            platform="web",
            key=self._key(user, cid),
            user=User(user.id, user.name or user.id),
            text=text,
            message_id=client_id or f"w{time.time_ns()}",
            command=parse_command(text),
            attachments=uploads.attachments,
            delivery_id=delivery,
            order=f"{time.time_ns():020d}",
            private=True,  # a user's own conversation: nobody else reads it
        )
        turn = self._spawn(self._turn(message, responder, delivery))
        answer = await asyncio.shield(turn)
        await responder.done()
        return answer, responder.extras()

    async def _turn(self, message: Message, responder: WebResponder, delivery: str) -> str:
        future: asyncio.Future[str] | None = None
        if delivery:
            future = asyncio.get_running_loop().create_future()
            self._running[delivery] = future
        try:
            await self.handler(message, responder)
            if not responder.parts and not responder.answered and delivery:  # a retry another
                # process is answering (this one sent nothing: no text, file or approval)
                answer = await self._first_answer(delivery)
                await _replay(responder.sink, answer)
                responder.parts["retry"] = answer
                return answer
            answer = responder.answer
            if delivery:
                ttl = self.settings.redis.dedupe_ttl
                await self.conversations.remember(CacheEntry(_memo(delivery), answer, ttl))
            return answer
        except BaseException as exc:
            if future is not None and not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else RetryPending())
                future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            responder.uploads.clear()  # the bytes last one turn
            if future is not None:
                if not future.done():
                    future.set_result(responder.answer)
                self._running.pop(delivery, None)

    async def _first_answer(self, delivery: str) -> str:
        """The answer to a message id first sent to another process (or answered before)."""
        deadline = time.monotonic() + RETRY_WAIT
        while True:
            answer = await self.conversations.cached(_memo(delivery))
            if answer is not None:
                return answer
            if time.monotonic() >= deadline:
                raise RetryPending()
            await asyncio.sleep(RETRY_POLL)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _key(self, user: WebUser, cid: str) -> ContextKey:
        """The user is the workspace too: scoped any way, a conversation stays theirs."""
        return ContextKey("web", channel=cid, user=user.id, workspace=user.id)

    def _conversation(self, user: WebUser, cid: str) -> ContextKey:
        """Where the core keeps that conversation: the key reduced by `platforms.web.scope`."""
        return self._key(user, cid).scoped(self.settings.scope("web"))

    async def _uploads(self, body: dict[str, Any]) -> Uploads:
        """The message's files, decoded off the event loop (megabytes of base64)."""
        if not body.get("attachments"):
            return Uploads()
        return await asyncio.to_thread(_read_attachments, body["attachments"], self.max_bytes)

    async def _json_body(self, request: web.Request, *, files: bool = True) -> Any:
        """The body as JSON: `max_body` bytes, and beside them the attached files' data
        (`files`: a message may carry some; a press may not)."""
        limit = self.body_limit if files else self.web.max_body
        declared = request.content_length or 0
        if declared > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(65536):  # what has arrived; b"" at the end
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = await _parse_json(raw)
        except ValueError:
            raise web.HTTPBadRequest(reason="the body is not JSON") from None
        if size - files_size(body) > self.web.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.web.max_body, actual_size=size)
        return body

    # --- errors and CORS, for /api/ only ---

    def _refused(self, request: web.Request, origin: str, allowed: bool) -> str:
        """Why a request from a browser is refused: another site's page (a WebSocket or a
        simple POST needs no preflight), or, without tokens, a host name that is not this
        machine's (DNS rebinding). Non-browser clients send no Origin."""
        if origin and not allowed and urlsplit(origin).netloc != request.host:
            return "this origin may not call the API (platforms.web.allowed_origins)"
        local = self.auth.secret is None
        if local and (request.url.host or "") not in ("127.0.0.1", "localhost", "::1"):
            return "without WEB_JWT_SECRET the API answers this machine only"
        if request.method == "POST" and request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(reason="send the body as application/json")
        return ""

    @web.middleware
    async def _api_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        origin = request.headers.get("Origin", "")
        allowed = origin in self.web.allowed_origins
        refused = self._refused(request, origin, allowed)
        if refused:
            return _error(403, refused)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
            response.headers.update(_PREFLIGHT)
        else:
            try:
                response = await handler(request)
            except Unauthorized as exc:
                response = _error(401, str(exc))
            except RetryPending as exc:
                response = _error(409, str(exc))
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = _error(exc.status, exc.reason)
            except Exception:
                log.exception("web API request failed")
                response = _error(500, "something went wrong; try again")
        if not response.prepared:
            _allow_origin(request, response, self.web.allowed_origins)
        return response


class RetryPending(Exception):
    """A retried id whose first request has not been answered yet (in another process)."""

    def __init__(self) -> None:
        super().__init__(
            "this message is still being answered, or its answer is gone: try again shortly, "
            "or read the conversation (GET its messages)"
        )


_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept",
    "Access-Control-Max-Age": "600",
}


async def _replay(sink: Sink | None, answer: str) -> None:
    """The whole answer to a retry, as one delta (the `done` follows)."""
    if sink is not None and answer:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await sink("delta", {"text": answer})


def _allow_origin(request: web.Request, response: web.StreamResponse, allowed: list[str]) -> None:
    """CORS: the allowed origin a request came from may read the response."""
    origin = request.headers.get("Origin", "")
    if origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


def _memo(delivery: str) -> str:
    return "web-answer:" + hashlib.sha256(delivery.encode()).hexdigest()[:40]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _conversation_id(request: web.Request) -> str:
    cid = request.match_info["cid"]
    if not CONVERSATION_ID.fullmatch(cid):
        raise web.HTTPBadRequest(reason="a conversation id is 1-64 of A-Z a-z 0-9 _ -")
    return cid


async def _parse_json(raw: str | bytes) -> Any:
    """JSON, parsed in a thread when it is large (a body with files)."""
    if len(raw) < 1_000_000:
        return json.loads(raw)
    return await asyncio.to_thread(json.loads, raw)


def _frame(event: str, message_id: str, data: dict[str, str]) -> dict[str, str]:
    """An event as a WebSocket frame: `id` is the message's (or the press's approval's); an
    `approval` frame keeps its own `id` and names the message it came with."""
    if event == "approval":
        return {"type": event, "message": message_id, **data}
    return {"type": event, "id": message_id, **data}


def _busy(frame_id: str) -> dict[str, str]:
    return {"type": "error", "id": frame_id, "error": f"at most {PER_SOCKET} messages in flight"}


def _approve_field(body: Any) -> bool:
    approve = body.get("approve") if isinstance(body, dict) else None
    if not isinstance(approve, bool):
        raise web.HTTPBadRequest(reason='send {"approve": true} or {"approve": false}')
    return approve


def _message_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason='send {"text": "...", "id": "...", "attachments": [...]}')
    text = body.get("text", "" if body.get("attachments") else None)  # files alone will do
    if not isinstance(text, str):
        raise web.HTTPBadRequest(reason='send {"text": "...", "id": "...", "attachments": [...]}')
    client_id = body.get("id") or ""
    if not isinstance(client_id, str) or len(client_id) > MAX_ID:
        raise web.HTTPBadRequest(reason=f"id: a string of at most {MAX_ID} characters")
    return text, client_id


def _socket_message(data: Any) -> tuple[str, str, str]:
    if data is None:
        raise ValueError("a frame is JSON")
    if not isinstance(data, dict) or data.get("type") != "message":
        raise ValueError('send {"type": "message", "conversation": ..., "id": ..., "text": ...}')
    default_text = "" if data.get("attachments") else None  # files alone are a message
    cid, client_id = data.get("conversation"), data.get("id") or ""
    text = data.get("text", default_text)
    if not isinstance(cid, str) or not CONVERSATION_ID.fullmatch(cid):
        raise ValueError("conversation: 1-64 of A-Z a-z 0-9 _ -")
    if not isinstance(text, str):
        raise ValueError("text: a string")
    if not isinstance(client_id, str) or len(client_id) > MAX_ID:
        raise ValueError(f"id: a string of at most {MAX_ID} characters")
    return cid, text, client_id
