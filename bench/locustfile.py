"""Load on the web channel's API with Locust: many users chatting at once, as a deployment sees it.

Run it from your machine against your own deployment, with the bot's `WEB_JWT_SECRET` (the
users sign their own tokens with it):

    WEB_JWT_SECRET=... locust -f bench/locustfile.py --host https://your-bot

then open http://localhost:8089 and choose the users and ramp; or without the web UI:

    WEB_JWT_SECRET=... locust -f bench/locustfile.py --host https://your-bot \\
        --headless -u 50 -r 10 -t 60s

Every message is answered by the bot's model: against a real model account the load costs
what the answers cost. Point the bot at a fake model for capacity tests (bench/README.md).

Each simulated user signs its own token (HS256, `sub` = `<--sub-prefix>-<random>`, `exp` in
`--token-ttl` seconds, signed again before it runs out), keeps `--conversations` conversation
ids, and waits 1-3 s between tasks. The tasks (weight, tag for `--tags` / `--exclude-tags`):

- SSE message (4, `sse`): `POST /api/conversations/{cid}/messages` with
  `Accept: text/event-stream`, the stream read to its end. Three rows, each timed from the
  request's start: "sse open" (the response headers), "sse first delta" (the first
  `event: delta`) and "sse done" (`event: done`).
- JSON message (2, `json`): the same POST without that header: "json message".
- WebSocket message (2, `ws`): one socket per user (`GET /api/ws`, the token in the
  Authorization header; `?token=` works too), opened on first use and kept: "ws connect"
  (the handshake), then per message "ws first delta" and "ws done" (an `error` frame fails it).
- history (1, `history`): `GET /api/conversations/{cid}/messages`: "history".

Every message has a new id (no retries: the bot's delivery dedupe never answers from its
memo). A message that fails at one stage fails that row and every later row of the same
message, so "sse done" and "ws done" count every message sent. The conversations stay in the
bot's Redis (until `context.ttl_days`) unless `--forget`: then each user deletes its
conversations when it stops ("forget" rows).

The WebSocket client is `simple_websocket` (wsproto over gevent's sockets), which Locust
installs (locust -> python-engineio -> simple-websocket); without it the WebSocket task is
left out with a warning. `websocket-client` is not used: Locust does not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import jwt
from locust import HttpUser, between, events, tag, task
from locust.env import Environment
from locust.runners import MasterRunner

try:
    import simple_websocket
except ImportError:  # pragma: no cover - Locust installs it
    simple_websocket = None

log = logging.getLogger("locustfile")

WS_WEIGHT = 2 if simple_websocket is not None else 0
PROMPTS = (
    "What is a good name for a cat?",
    "Summarise the plot of Hamlet in two sentences.",
    "How do I undo the last git commit?",
    "Give me three ideas for a team lunch.",
    "Translate 'good morning' into French and German.",
    "What does HTTP 429 mean?",
    "Write a haiku about Mondays.",
    "Explain recursion to a ten-year-old.",
)


class Failed(Exception):
    """One message's failure, reported on the row where it happened and every later one."""


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("chatbot web channel")
    group.add_argument(
        "--conversations", type=int, default=3, env_var="BENCH_CONVERSATIONS",
        help="conversation ids each user keeps (default 3)",
    )  # fmt: skip
    group.add_argument(
        "--answer-timeout", type=float, default=120.0, env_var="BENCH_ANSWER_TIMEOUT",
        help="seconds a whole answer may take before it counts as failed (default 120)",
    )  # fmt: skip
    group.add_argument(
        "--sub-prefix", default="locust", env_var="BENCH_SUB_PREFIX",
        help="the tokens' sub is <prefix>-<random>, one per user (default locust)",
    )  # fmt: skip
    group.add_argument(
        "--token-ttl", type=int, default=3600, env_var="BENCH_TOKEN_TTL",
        help="seconds a user's token is valid; signed again before it expires (default 3600)",
    )  # fmt: skip
    group.add_argument(
        "--forget", action="store_true", default=False, env_var="BENCH_FORGET",
        help="each user deletes its conversations when it stops",
    )  # fmt: skip


@events.init.add_listener
def _check(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the workers sign the tokens
    if not os.environ.get("WEB_JWT_SECRET"):
        raise SystemExit("WEB_JWT_SECRET is not set: the bot's secret signs the users' tokens")
    if simple_websocket is None:
        log.warning("simple_websocket is not installed: the WebSocket task is left out")


class WebChatUser(HttpUser):
    """One person chatting on the web channel, in a few conversations."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.secret = os.environ["WEB_JWT_SECRET"]
        self.sub = f"{getattr(options, 'sub_prefix', 'locust')}-{uuid.uuid4().hex[:12]}"
        self.ttl = max(120, int(getattr(options, "token_ttl", 3600)))
        self.timeout = float(getattr(options, "answer_timeout", 120.0))
        self.forget = bool(getattr(options, "forget", False))
        count = max(1, int(getattr(options, "conversations", 3)))
        self.conversations = [f"lc{uuid.uuid4().hex[:16]}" for _ in range(count)]
        self._token, self._expires = "", 0.0
        self.ws: Any = None

    def on_stop(self) -> None:
        self._drop_socket()
        if self.forget:
            for cid in self.conversations:
                self.client.delete(f"/api/conversations/{cid}", headers=self._auth(), name="forget")

    # --- the tasks ---

    @tag("sse")
    @task(4)
    def sse_message(self) -> None:
        path, body = self._message()
        headers = {**self._auth(), "Accept": "text/event-stream"}
        start = time.perf_counter()
        rows = ["sse open", "sse first delta", "sse done"]
        size = 0
        try:
            with self.client.post(
                path, json=body, headers=headers, stream=True, catch_response=True,
                name="sse open", timeout=self.timeout,
            ) as response:  # fmt: skip
                content_type = response.headers.get("Content-Type", "")
                if response.status_code != 200 or not content_type.startswith("text/event-stream"):
                    error = Failed(f"HTTP {response.status_code}: {response.text[:200]!r}")
                    response.failure(error)
                    rows.pop(0)
                    raise error
                response.success()  # "sse open": reported by Locust when the block ends
                rows.pop(0)
                deadline = start + self.timeout
                buffer = b""
                chunks = response.iter_content(chunk_size=None)
                for chunk in chunks:
                    size += len(chunk)
                    buffer += chunk
                    while b"\n\n" in buffer:
                        raw, buffer = buffer.split(b"\n\n", 1)
                        event, data = _sse_event(raw)
                        if event == "delta" and rows[0] == "sse first delta":
                            self._report("SSE", rows.pop(0), start, size)
                        elif event == "done":
                            _answer_text(data)
                            if rows[0] == "sse first delta":
                                raise Failed("done before any delta")
                            self._report("SSE", rows.pop(0), start, size)
                            for _ in chunks:  # to the end: the connection goes back to the pool
                                pass
                            return
                    if time.perf_counter() > deadline:
                        response.close()
                        raise Failed(f"no done in {self.timeout:g} s")
                raise Failed("the stream ended without done")
        except Exception as exc:  # every failure is a row in the report
            for name in rows:
                self._report("SSE", name, start, size, exc)

    @tag("json")
    @task(2)
    def json_message(self) -> None:
        path, body = self._message()
        headers = {**self._auth(), "Accept": "application/json"}
        with self.client.post(
            path, json=body, headers=headers, catch_response=True, name="json message",
            timeout=self.timeout,
        ) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]!r}")
                return
            try:
                _answer_text(response.json())
            except (ValueError, Failed) as exc:
                response.failure(exc)

    @tag("ws")
    @task(WS_WEIGHT)
    def ws_message(self) -> None:
        start = time.perf_counter()
        rows = ["ws first delta", "ws done"]
        try:
            ws = self._socket()
            cid = random.choice(self.conversations)
            ident = uuid.uuid4().hex
            start = time.perf_counter()  # the message's time, not the handshake's
            frame = {"type": "message", "conversation": cid, "id": ident, "text": _prompt()}
            ws.send(json.dumps(frame))
            deadline = start + self.timeout
            while rows:
                remaining = deadline - time.perf_counter()
                raw = ws.receive(timeout=remaining) if remaining > 0 else None
                if raw is None:
                    raise Failed(f"no done in {self.timeout:g} s")
                data = json.loads(raw)
                if data.get("id") != ident:
                    continue  # a late frame of an earlier message that timed out
                kind = data.get("type")
                if kind == "error":
                    raise Failed(f"error frame: {data.get('error')!r}")
                if kind == "delta" and rows[0] == "ws first delta":
                    self._report("WS", rows.pop(0), start, len(raw))
                elif kind == "done":
                    _answer_text(data)
                    if rows[0] == "ws first delta":
                        raise Failed("done before any delta")
                    self._report("WS", rows.pop(0), start, len(raw))
        except Exception as exc:  # every failure is a row in the report
            if not isinstance(exc, Failed):
                self._drop_socket()  # closed or broken: the next message opens a new one
            for name in rows:
                self._report("WS", name, start, 0, exc)

    @tag("history")
    @task(1)
    def history(self) -> None:
        cid = random.choice(self.conversations)
        with self.client.get(
            f"/api/conversations/{cid}/messages", headers=self._auth(), catch_response=True,
            name="history", timeout=self.timeout,
        ) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]!r}")
                return
            try:
                messages = response.json()["messages"]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"not a history: {exc!r}")
                return
            if not isinstance(messages, list):
                response.failure("messages is not a list")

    # --- helpers ---

    def _auth(self) -> dict[str, str]:
        now = time.time()
        if now > self._expires - 60:
            self._expires = now + self.ttl
            claims = {"sub": self.sub, "iat": int(now), "exp": int(self._expires)}
            self._token = jwt.encode(claims, self.secret, algorithm="HS256")
        return {"Authorization": f"Bearer {self._token}"}

    def _message(self) -> tuple[str, dict[str, str]]:
        cid = random.choice(self.conversations)
        return f"/api/conversations/{cid}/messages", {"text": _prompt(), "id": uuid.uuid4().hex}

    def _socket(self) -> Any:
        """The user's WebSocket, opened now (a "ws connect" row) unless it is open."""
        if self.ws is not None and self.ws.connected:
            return self.ws
        self._drop_socket()
        start = time.perf_counter()
        try:
            with gevent.Timeout(self.timeout, Failed(f"no handshake in {self.timeout:g} s")):
                self.ws = simple_websocket.Client.connect(_ws_url(self.host), headers=self._auth())
        except Exception as exc:
            self._report("WS", "ws connect", start, 0, exc)
            raise
        self._report("WS", "ws connect", start, 0)
        return self.ws

    def _drop_socket(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None and ws.connected:
            with contextlib.suppress(Exception):  # it is going away either way
                ws.close()

    def _report(
        self, kind: str, name: str, start: float, size: int, error: BaseException | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            response=None,
            context={},
            exception=error,
        )


def _prompt() -> str:
    return f"{random.choice(PROMPTS)} ({random.randrange(10**6)})"


def _sse_event(raw: bytes) -> tuple[str, dict[str, Any]]:
    """One server-sent event: its name (`message` when unnamed) and its JSON data."""
    event, lines = "message", []
    for line in raw.decode().splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    try:
        data = json.loads("\n".join(lines)) if lines else {}
    except ValueError:
        raise Failed(f"{event} event data is not JSON: {raw[:200]!r}") from None
    return event, data if isinstance(data, dict) else {}


def _answer_text(data: Any) -> str:
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text:
        raise Failed(f"no answer text: {str(data)[:200]!r}")
    return text


def _ws_url(host: str | None) -> str:
    """`--host` (http or https, maybe with a path) as the WebSocket endpoint's URL."""
    if not host:
        raise Failed("no --host")
    parts = urlsplit(host)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/api/ws", "", ""))
