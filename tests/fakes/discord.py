"""A local fake of Discord: the REST API, the gateway and the CDN, driven by the real
discord.py.

REST answers with `Content-Type: application/json` exactly (discord.py reads anything else
as text). The gateway sends HELLO, takes IDENTIFY, ACKs heartbeats, dispatches READY and
GUILD_CREATE, and then whatever the test sends (MESSAGE_CREATE, INTERACTION_CREATE).
Files: `attachment()` puts bytes on the fake's CDN (`/attachments/...`, signed-URL style)
and `user_sends_file()` posts them in a MESSAGE_CREATE; the bot's uploads (multipart
`payload_json` + `files[n]`, to a channel or an interaction's follow-up) are kept in
`uploads` and served back the same way. As on Discord, the first follow-up after a
deferred response takes that response's place.
Buttons: a message keeps the `components` it was posted (or edited) with; `press()` clicks one
as Discord delivers it (INTERACTION_CREATE of type 3, MESSAGE_COMPONENT, carrying the whole
message, the member with the permissions Discord resolved, a token). The interaction's
callback is taken once and within 3 s (types 4, 6, 7, as Discord: later is "Unknown
interaction", again is "already acknowledged"); its `@original` is the pressed message, and
ephemeral answers (flag 64, in the callback or a follow-up) go to `ephemerals`, seen by the
presser alone, not to the channel.
Every REST and CDN call is recorded; `fail()` injects 5xx or 429 answers.
Sharding: `FakeDiscord(shard_count=N)` answers GET /gateway/bot with `shards: N`; a connection
that IDENTIFYs with `shard: [id, count]` is that shard (`connections` records which), gets a
READY naming only its guilds and a GUILD_CREATE for each of them, and receives the events of
the guilds with `(guild_id >> 22) % count == id`, DMs only on shard 0, as Discord routes them
(https://discord.com/developers/docs/events/gateway#sharding). An id outside 0..count-1 is
closed with 4010 (Invalid shard). `add_guild()` and `guild_on_shard()` make guilds to route.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import mimetypes
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.common import Screen, serve_locally

TOKEN = "TEST.discord.token"
APP_ID = "900000000000000001"
BOT_ID = APP_ID
GUILD = "910000000000000001"
CHANNEL = "920000000000000001"
DM_CHANNEL = "920000000000000099"
USER_ID = "930000000000000001"
VOICE_MESSAGE = 1 << 13  # the message flag IS_VOICE_MESSAGE
EPHEMERAL = 1 << 6  # the message flag EPHEMERAL
CALLBACK_DEADLINE = 3.0  # seconds Discord waits for an interaction's first response
ADMINISTRATOR = 1 << 3
# A member's resolved permissions in a channel: an administrator has them all; anyone else
# here may view, send, add reactions, read history and use application commands.
ADMIN_PERMISSIONS = str((1 << 50) - 1)
MEMBER_PERMISSIONS = str((1 << 10) | (1 << 11) | (1 << 6) | (1 << 16) | (1 << 31))

_ids = itertools.count(940000000000000001)


def snowflake() -> str:
    return str(next(_ids))


def bot_user() -> dict[str, Any]:
    return {"id": BOT_ID, "username": "chatbot", "discriminator": "0", "global_name": "chatbot",
            "avatar": None, "bot": True, "flags": 0}  # fmt: skip


def human(user_id: str = USER_ID, name: str = "ann") -> dict[str, Any]:
    return {"id": user_id, "username": name, "discriminator": "0", "global_name": name,
            "avatar": None}  # fmt: skip


def text_channel(channel_id: str = CHANNEL, guild_id: str = GUILD) -> dict[str, Any]:
    return {"id": channel_id, "type": 0, "guild_id": guild_id, "name": "general", "position": 0,
            "permission_overwrites": [], "nsfw": False, "parent_id": None}  # fmt: skip


def shard_of(guild_id: str | int, shard_count: int) -> int:
    """The shard Discord sends a guild's events to."""
    return (int(guild_id) >> 22) % shard_count


def guild_on_shard(shard_id: int, shard_count: int, n: int = 0) -> str:
    """The `n`-th made-up guild id whose events go to `shard_id` of `shard_count`."""
    return str(((1_000_000_000 + shard_id + n * shard_count) << 22) | 1)


@dataclass
class Connection:
    """One gateway connection: the shard it identified as (`(id, count)`; None: not yet,
    `(0, 1)`: unsharded)."""

    socket: web.WebSocketResponse
    shard: tuple[int, int] | None = None

    @property
    def open(self) -> bool:
        return self.shard is not None and not self.socket.closed

    def takes(self, guild_id: str | None) -> bool:
        """Whether Discord would send this connection the events of `guild_id` (None: a DM)."""
        if self.shard is None:
            return False
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, count))


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any]
    query: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Upload:
    """A file the bot posted: where (`channel`, or the interaction `token`), with what."""

    data: bytes
    filename: str
    content: str
    channel: str
    message_id: str
    message_reference: dict[str, Any] | None = None
    token: str | None = None


@dataclass
class Press:
    """A button press the fake delivered: the interaction, and how the bot answered it."""

    id: str
    token: str
    message_id: str
    channel_id: str
    user: str
    at: float = field(default_factory=time.monotonic)
    response: int | None = None  # the callback's type, once answered


@dataclass
class Ephemeral:
    """A message only the presser sees ("Only you can see this")."""

    token: str
    user: str
    content: str
    via: str  # "callback" or "followup"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord:
    """`async with FakeDiscord() as discord:`; `api_url` and `gateway_url` go to the bot."""

    def __init__(self, *, shard_count: int = 1) -> None:
        self.shard_count = shard_count  # what GET /gateway/bot recommends
        self.guilds: dict[str, list[str]] = {GUILD: [CHANNEL]}  # guild id -> its text channels
        self.connections: list[Connection] = []
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # id -> message as stored
        self.screen = Screen()
        self.failures: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self.threads: dict[str, dict[str, Any]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # CDN path -> (bytes, content type)
        self.uploads: list[Upload] = []
        self.deferred: set[str] = set()  # interaction tokens whose response is "thinking…"
        self.presses: dict[str, Press] = {}  # interaction id -> press
        self.ephemerals: list[Ephemeral] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._sockets: list[web.WebSocketResponse] = []
        self.identified = asyncio.Event()
        self.ready_gate = asyncio.Event()  # cleared: READY is held back (a slow gateway)
        self._readying: set[asyncio.Task[None]] = set()
        self.ready_gate.set()
        self._sequence = itertools.count(1)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        app.router.add_get("/attachments/{path:.*}", self._cdn)
        self._runner, self.port = await serve_locally(app, shutdown_timeout=0.2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in list(self._readying):
            task.cancel()
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests use -------------------------------------------------------------

    def fail(self, method_and_prefix: str, status: int = 500, **body: Any) -> None:
        """The next REST call matching "PATCH /channels" (method + path prefix) fails."""
        self.failures.setdefault(method_and_prefix, deque()).append((status, body))

    def calls_to(self, method: str, path_contains: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and path_contains in c.path]

    def texts_in(self, channel_id: str) -> list[str]:
        """Current text of every message the bot has in a channel, in order."""
        return [self.messages[str(key)]["content"] for key in self.screen.keys(channel_id)]

    def add_guild(self, guild_id: str, channel_id: str | None = None) -> str:
        """A guild the bot is in, with one text channel (returned); shards that identify
        afterwards get it in their READY."""
        channel = channel_id or snowflake()
        self.guilds.setdefault(guild_id, []).append(channel)
        return channel

    def shards(self) -> list[tuple[int, int]]:
        """The shards identified on connections still open, in the order they identified."""
        return [c.shard for c in self.connections if c.open and c.shard is not None]

    async def send_raw(self, text: str) -> None:
        """Any text frame on the gateway, as a broken proxy might send."""
        await self._sockets[-1].send_str(text)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """An event on the connection Discord would pick: the shard of `data["guild_id"]`
        (shard 0 without one: DMs). Without any sharded connection, the newest socket."""
        payload = {"op": 0, "t": event, "s": next(self._sequence) + 2, "d": data}
        await self._socket_for(data.get("guild_id")).send_str(json.dumps(payload))

    def _socket_for(self, guild_id: str | None) -> web.WebSocketResponse:
        for connection in reversed(self.connections):
            if connection.open and connection.takes(guild_id):
                return connection.socket
        if any(c.shard is not None and c.shard[1] > 1 for c in self.connections):
            raise LookupError(f"no open shard takes the events of guild {guild_id}")
        return self._sockets[-1]

    async def user_says(self, content: str, *, channel_id: str = CHANNEL, guild: bool = True,
                        guild_id: str | None = None,
                        mention_bot: bool = False, author: dict[str, Any] | None = None,
                        attachments: list[dict[str, Any]] | None = None, flags: int = 0
                        ) -> dict[str, Any]:  # fmt: skip
        """A MESSAGE_CREATE from a user; in a guild (`guild_id`, else the guild that has
        `channel_id`, else GUILD) unless `guild` is False (a DM)."""
        author = author or human()
        message: dict[str, Any] = {
            "id": snowflake(), "channel_id": channel_id, "author": author, "content": content,
            "timestamp": _now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [bot_user()] if mention_bot else [],
            "mention_roles": [], "attachments": attachments or [], "embeds": [],
            "pinned": False, "type": 0, "flags": flags,
        }  # fmt: skip
        if guild:
            message["guild_id"] = guild_id or self._guild_having(channel_id)
            message["member"] = {"roles": [], "joined_at": _now(), "deaf": False, "mute": False,
                                 "flags": 0}  # fmt: skip
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    def _guild_having(self, channel_id: str) -> str:
        return next((g for g, chans in self.guilds.items() if channel_id in chans), GUILD)

    def attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None,
        *,
        channel_id: str = CHANNEL,
        voice: bool = False,
    ) -> dict[str, Any]:
        """Put `data` on the CDN; the attachment object a message carries, shaped like
        Discord's (a voice message's has its duration and waveform)."""
        attachment_id = snowflake()
        path = f"/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        self.files[path] = (data, content_type or "application/octet-stream")
        url = f"http://127.0.0.1:{self.port}{path}?ex=6800000a&is=68000000&hm=abc123&"
        item: dict[str, Any] = {"id": attachment_id, "filename": filename, "size": len(data),
                                "url": url, "proxy_url": url, "flags": 0}  # fmt: skip
        if content_type is not None:
            item["content_type"] = content_type
        if voice:
            item["duration_secs"] = 1.5
            item["waveform"] = base64.b64encode(bytes(range(0, 256, 4))).decode()
        return item

    async def user_sends_file(self, data: bytes, filename: str, content_type: str | None,
                              content: str = "", *, voice: bool = False, **says: Any
                              ) -> dict[str, Any]:  # fmt: skip
        """A MESSAGE_CREATE carrying one file (a voice message when `voice`); `says` as for
        `user_says` (channel_id, guild, mention_bot, author)."""
        channel_id = says.get("channel_id", CHANNEL)
        item = self.attachment(data, filename, content_type, channel_id=channel_id, voice=voice)
        return await self.user_says(content, attachments=[item],
                                    flags=VOICE_MESSAGE if voice else 0, **says)  # fmt: skip

    async def slash(
        self, name: str, options: dict[str, str] | list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE for a slash command in the guild channel. `options` as a list
        goes on the wire as given (what a stale command registration delivers)."""
        if not isinstance(options, list):
            options = [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()]
        data = {
            "id": snowflake(), "application_id": APP_ID, "type": 2, "token": f"itok-{snowflake()}",
            "version": 1, "guild_id": GUILD, "channel_id": CHANNEL, "channel": text_channel(),
            "member": {"user": human(), "roles": [], "permissions": "2147483647",
                       "joined_at": _now(), "deaf": False, "mute": False, "flags": 0},
            "data": {"id": snowflake(), "name": name, "type": 1, "guild_id": GUILD,
                     "options": options},
            "app_permissions": "2147483647", "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": GUILD}, "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }  # fmt: skip
        await self.dispatch("INTERACTION_CREATE", data)
        return data

    def buttons(self, message_id: str) -> list[dict[str, Any]]:
        """The buttons a message shows now (its action rows' components), in order."""
        rows = self.messages[message_id].get("components") or []
        return [c for row in rows for c in row.get("components", []) if c.get("type") == 2]

    async def press(self, message_id: str, label: str = "", *, custom_id: str | None = None,
                    user: dict[str, Any] | None = None, admin: bool = False) -> Press:  # fmt: skip
        """A click on the button labelled `label` of the bot's message (or one carrying
        `custom_id`, whatever the message shows): the INTERACTION_CREATE Discord sends, with
        the message as it is now and the member who pressed (`admin`: their resolved
        permissions include Administrator)."""
        stored = self.messages[message_id]
        if custom_id is None:
            [button] = [b for b in self.buttons(message_id) if b.get("label") == label]
            custom_id = button["custom_id"]
        user = user or human()
        channel_id = stored["channel_id"]
        channel = self.threads.get(channel_id) or text_channel(channel_id)
        press = Press(snowflake(), f"itok-{snowflake()}", message_id, channel_id, user["id"])
        message = {k: v for k, v in stored.items() if k != "token"}
        data = {
            "id": press.id, "application_id": APP_ID, "type": 3, "token": press.token,
            "version": 1, "guild_id": GUILD, "channel_id": channel_id, "channel": channel,
            "member": {"user": user, "roles": [], "joined_at": _now(), "deaf": False,
                       "mute": False, "flags": 0,
                       "permissions": ADMIN_PERMISSIONS if admin else MEMBER_PERMISSIONS},
            "message": message,
            "data": {"custom_id": custom_id, "component_type": 2},
            "app_permissions": MEMBER_PERMISSIONS, "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": GUILD}, "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }  # fmt: skip
        self.presses[press.id] = press
        await self.dispatch("INTERACTION_CREATE", data)
        return press

    def _press_of(self, token: str) -> Press | None:
        return next((p for p in self.presses.values() if p.token == token), None)

    # --- the gateway ----------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        connection = Connection(socket)
        self.connections.append(connection)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await socket.send_str(json.dumps({"op": 11}))
            elif payload["op"] == 2:
                if payload["d"].get("token") != TOKEN:
                    await socket.close(code=4004, message=b"Authentication failed")
                    break
                shard_id, count = payload["d"].get("shard") or (0, 1)
                if not 0 <= shard_id < count:
                    await socket.close(code=4010, message=b"Invalid shard")
                    break
                connection.shard = (shard_id, count)
                # READY may be held back (`ready_gate`): the loop keeps reading meanwhile, so a
                # client that gives up and closes gets its close answered, not a hang.
                task = asyncio.create_task(self._ready(connection))
                self._readying.add(task)
                task.add_done_callback(self._readying.discard)
        return socket

    async def _ready(self, connection: Connection) -> None:
        """READY naming the shard's guilds (unavailable, as Discord sends them), then one
        GUILD_CREATE per guild."""
        await self.ready_gate.wait()
        socket, shard = connection.socket, connection.shard or (0, 1)
        mine = [g for g in self.guilds if connection.takes(g)]
        ready = {"v": 10, "user": bot_user(),
                 "guilds": [{"id": g, "unavailable": True} for g in mine],
                 "session_id": f"session-{shard[0]}", "resume_gateway_url": self.gateway_url,
                 "application": {"id": APP_ID, "flags": 0}, "private_channels": [],
                 "relationships": [], "user_settings": {}}  # fmt: skip
        if shard != (0, 1):
            ready["shard"] = list(shard)
        await socket.send_str(json.dumps({"op": 0, "t": "READY", "s": 1, "d": ready}))
        for sequence, guild_id in enumerate(mine, start=2):
            await socket.send_str(json.dumps({"op": 0, "t": "GUILD_CREATE", "s": sequence,
                                              "d": self._guild(guild_id)}))  # fmt: skip
        self.identified.set()

    def _guild(self, guild_id: str) -> dict[str, Any]:
        return {"id": guild_id, "name": "Test guild", "owner_id": USER_ID, "icon": None,
                "roles": [{"id": guild_id, "name": "@everyone", "permissions": "2147483647",
                           "position": 0, "color": 0, "hoist": False, "managed": False,
                           "mentionable": False}],
                "channels": [text_channel(c, guild_id) for c in self.guilds[guild_id]],
                "threads": [], "members": [], "emojis": [],
                "stickers": [], "features": [], "member_count": 2, "large": False,
                "presences": [], "voice_states": [], "stage_instances": [],
                "guild_scheduled_events": [], "verification_level": 0,
                "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "premium_tier": 0, "preferred_locale": "en-US",
                "nsfw_level": 0, "unavailable": False, "joined_at": _now()}  # fmt: skip

    # --- REST -----------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body: dict[str, Any] = {}
        files: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            body, files = await _read_multipart(request)
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        self.calls.append(
            Call(request.method, path, body, dict(request.query), headers=dict(request.headers))
        )
        if not path.startswith(("/interactions/", "/webhooks/")) and (
            request.headers.get("Authorization") != f"Bot {TOKEN}"
        ):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        failed = self._failure(request.method, path)
        if failed is not None:
            return failed
        return self._route(request.method, path, body, files)

    def _failure(self, method: str, path: str) -> web.Response | None:
        for key, queue in self.failures.items():
            wanted, _, prefix = key.partition(" ")
            if queue and method == wanted and path.startswith(prefix):
                status, extra = queue.popleft()
                if status == 429:
                    retry = extra.get("retry_after", 0.2)
                    return _json({"message": "You are being rate limited.", "retry_after": retry,
                                  "global": False}, 429, {"Retry-After": str(retry)})  # fmt: skip
                return _json({"message": "Server error", "code": 0}, status)
        return None

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """The CDN: no auth (the URL is signed), the bytes with their content type."""
        path = request.rel_url.raw_path
        self.calls.append(Call("GET", path, {}, dict(request.query),
                               headers=dict(request.headers)))  # fmt: skip
        failed = self._failure("GET", path)
        if failed is not None:
            return failed
        if path not in self.files:
            return web.Response(status=404, text="Not Found")
        data, content_type = self.files[path]
        return web.Response(body=data, headers={"Content-Type": content_type})

    def _route(
        self, method: str, path: str, body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> web.Response:
        parts = path.strip("/").split("/")
        if path == "/users/@me":
            return _json(bot_user())
        if path == "/oauth2/applications/@me":
            return _json({"id": APP_ID, "name": "chatbot", "icon": None, "description": "",
                          "bot_public": True, "bot_require_code_grant": False,
                          "verify_key": "0" * 64, "flags": 0, "owner": human(),
                          "team": None, "summary": ""})  # fmt: skip
        if path == "/gateway" or path == "/gateway/bot":
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return _json({"url": self.gateway_url, "shards": self.shard_count,
                          "session_start_limit": limit})  # fmt: skip
        if parts[0] == "applications" and parts[-1] == "commands" and method == "PUT":
            commands: list[dict[str, Any]] = body if isinstance(body, list) else []
            return _json([{**c, "id": snowflake(), "application_id": APP_ID, "version": "1",
                           "default_member_permissions": None, "type": 1}
                          for c in commands])  # fmt: skip
        if parts[0] == "channels" and parts[-1] == "typing":
            return web.Response(status=204)
        if parts[0] == "channels" and parts[-1] == "threads" and method == "POST":
            thread = {"id": snowflake(), "type": 11, "guild_id": GUILD, "parent_id": parts[1],
                      "name": body.get("name", "thread"), "owner_id": BOT_ID,
                      "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                          "archive_timestamp": _now(), "locked": False},
                      "message_count": 0, "member_count": 1, "rate_limit_per_user": 0}  # fmt: skip
            self.threads[thread["id"]] = thread
            return _json(thread, 201)
        if parts[0] == "channels" and parts[-1] == "messages" and method == "POST":
            return _json(self._store(parts[1], body, files=files))
        if parts[0] == "channels" and len(parts) == 4 and method == "PATCH":
            return self._edit(parts[3], body)
        if parts[0] == "channels" and len(parts) == 4 and method == "DELETE":
            stored = self.messages.pop(parts[3], None)
            if stored is None:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            self.screen.removed(stored["channel_id"], parts[3])
            return web.Response(status=204)
        if parts[0] == "interactions" and parts[-1] == "callback" and parts[1] in self.presses:
            return self._answer_press(self.presses[parts[1]], body)
        if parts[0] == "webhooks" and len(parts) >= 3 and (press := self._press_of(parts[2])):
            if press.response is None:  # the token works once the interaction is answered
                return _json({"message": "Unknown Webhook", "code": 10015}, 404)
            if method == "POST" and len(parts) == 3:
                return self._follow_up(press, body, files)
            if method == "PATCH" and parts[-1] == "@original":
                return self._edit(press.message_id, body)
        if parts[0] == "interactions" and parts[-1] == "callback":
            message_id = snowflake()
            content = (body.get("data") or {}).get("content", "")  # type 4 answers at once
            self._store(CHANNEL, {"content": content}, message_id=message_id, token=parts[2])
            if body.get("type") == 5:
                self.deferred.add(parts[2])
            return _json({"interaction": {"id": parts[1], "type": 2, "response_message_id":
                          message_id, "response_message_loading": True,
                          "response_message_ephemeral": False},
                          "resource": {"type": 5}})  # fmt: skip
        if parts[0] == "webhooks" and len(parts) == 3 and method == "POST":
            if parts[2] in self.deferred:  # the first follow-up is the deferred response
                self.deferred.discard(parts[2])
                return self._fill_deferred(parts[2], body, files)
            return _json(self._store(CHANNEL, body, token=parts[2], files=files))
        if parts[0] == "webhooks" and parts[-2] == "messages" and method == "PATCH":
            if parts[-1] == "@original":
                self.deferred.discard(parts[2])
                found = [m for m in self.messages.values() if m.get("token") == parts[2]]
                return self._edit(found[0]["id"] if found else "missing", body)
            return self._edit(parts[-1], body)
        return _json({"message": f"404: Not Found ({method} {path})", "code": 0}, 404)

    def _answer_press(self, press: Press, body: dict[str, Any]) -> web.Response:
        """An interaction callback for a button press: 4 (a message; ephemeral with flag
        64), 6 (deferred update: nothing shows), 7 (the pressed message updated)."""
        if press.response is not None:
            return _json({"message": "Interaction has already been acknowledged.",
                          "code": 40060}, 400)  # fmt: skip
        if time.monotonic() - press.at > CALLBACK_DEADLINE:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        kind, data = body.get("type"), body.get("data") or {}
        if kind not in (4, 6, 7):
            return _json({"message": "Invalid Form Body", "code": 50035}, 400)
        press.response = kind
        message: dict[str, Any] | None = None
        if kind == 4 and (data.get("flags") or 0) & EPHEMERAL:
            self.ephemerals.append(Ephemeral(press.token, press.user, data.get("content") or "",
                                             "callback"))  # fmt: skip
        elif kind == 4:
            message = self._store(press.channel_id, data, token=press.token)
        elif kind == 7:
            self._edit(press.message_id, data)
            message = self.messages[press.message_id]
        interaction = {"id": press.id, "type": 3,
                       "response_message_ephemeral": kind == 4 and message is None}  # fmt: skip
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            interaction["response_message_id"] = message["id"]
            resource["message"] = {k: v for k, v in message.items() if k != "token"}
        return _json({"interaction": interaction, "resource": resource})

    def _follow_up(
        self, press: Press, body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> web.Response:
        """A follow-up to a press: a new message in its channel, or one the presser alone
        sees."""
        if (body.get("flags") or 0) & EPHEMERAL:
            self.ephemerals.append(Ephemeral(press.token, press.user, body.get("content") or "",
                                             "followup"))  # fmt: skip
            message: dict[str, Any] = {
                "id": snowflake(), "channel_id": press.channel_id, "author": bot_user(),
                "content": body.get("content") or "", "timestamp": _now(),
                "edited_timestamp": None, "tts": False, "mention_everyone": False,
                "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
                "pinned": False, "type": 0, "flags": EPHEMERAL,
            }  # fmt: skip
            return _json(message)
        return _json(self._store(press.channel_id, body, token=press.token, files=files))

    def _store(self, channel_id: str, body: dict[str, Any], *, message_id: str | None = None,
               token: str | None = None, files: list[tuple[str, bytes]] | None = None
               ) -> dict[str, Any]:  # fmt: skip
        message: dict[str, Any] = {
            "id": message_id or snowflake(), "channel_id": channel_id, "author": bot_user(),
            "content": body.get("content") or "", "timestamp": _now(), "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
            "components": body.get("components") or [],
        }  # fmt: skip
        reference = body.get("message_reference")
        if reference:  # a reply: Discord shows the question above it
            replied = str(reference.get("message_id"))
            message["message_reference"] = {"type": 0, "channel_id": channel_id,
                                            "message_id": replied}  # fmt: skip
        if message_id is None and token is None and "guild_id" not in body:
            message["guild_id"] = GUILD
        message["attachments"] = self._uploaded(message, body, files or [], token)
        self.messages[message["id"]] = {**message, "token": token}
        self.screen.posted(channel_id, message["id"])
        return message

    def _fill_deferred(
        self, token: str, body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> web.Response:
        found = [m for m in self.messages.values() if m.get("token") == token]
        if not found:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        stored = found[0]
        stored["content"] = body.get("content") or ""
        stored["components"] = body.get("components") or []
        stored["attachments"] = self._uploaded(stored, body, files, token)
        self.screen.changed(stored["channel_id"])
        return _json({k: v for k, v in stored.items() if k != "token"})

    def _uploaded(self, message: dict[str, Any], body: dict[str, Any],
                  files: list[tuple[str, bytes]], token: str | None
                  ) -> list[dict[str, Any]]:  # fmt: skip
        """The attachment objects of the files posted with `message` (on the CDN too)."""
        items = []
        for filename, data in files:
            guessed = mimetypes.guess_type(filename)[0]
            items.append(self.attachment(data, filename, guessed, channel_id=message["channel_id"]))
            self.uploads.append(Upload(data, filename, message["content"], message["channel_id"],
                                       message["id"], body.get("message_reference"),
                                       token))  # fmt: skip
        return items

    def _edit(self, message_id: str, body: dict[str, Any]) -> web.Response:
        stored = self.messages.get(message_id)
        if stored is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if "content" in body:
            stored["content"] = body["content"]
        if "components" in body:  # an empty list removes the buttons
            stored["components"] = body["components"]
        stored["edited_timestamp"] = _now()
        self.screen.changed(stored["channel_id"])
        return _json({k: v for k, v in stored.items() if k != "token"})


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """discord.py's multipart body: `payload_json` (the JSON it sends otherwise) and one
    `files[n]` part per file."""
    payload: dict[str, Any] = {}
    files: list[tuple[str, bytes]] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "payload_json":
            payload = json.loads(await part.text())
        elif (part.name or "").startswith("files["):
            files.append((part.filename or "", bytes(await part.read())))
    return payload, files


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
