"""The web channel's HTTP + WebSocket API (adapters/web.py) as a client sees it: the real
adapter in JWT mode over the real core, the test Redis and the fake OpenAI server, reached
with a real aiohttp ClientSession; and `chatbot web` / `chatbot token` as processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from adapters.web import WebAdapter
from core.config import Secrets, Settings
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import bot_process_env, wait_for
from tests.redis_server import free_port
from tests.web_channel import running_web

SECRET = "test-web-jwt-secret-0123456789-abcdefghijklmnop"  # 32+ bytes: no PyJWT warning
OTHER_SECRET = "another-secret-of-the-same-length-0123456789abcd"
ALLOWED_ORIGIN = "https://chat.example.com"
SLOW_ANSWER = " ".join(f"word{i}" for i in range(16))  # 16 pieces at 20 tokens a second


def token(
    sub: str | None = "alice", *, ttl: float = 3600, secret: str = SECRET, **claims: Any
) -> str:
    """A web channel token as an identity provider would sign it."""
    payload: dict[str, Any] = {"exp": int(time.time() + ttl), **claims}
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(sub: str = "alice", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    fake: FakeOpenAI
    adapter: WebAdapter

    def url(self, path: str) -> str:
        return self.base + path

    def messages_url(self, cid: str) -> str:
        return self.url(f"/api/conversations/{cid}/messages")

    async def ask(self, cid: str, text: str, sub: str = "alice", **body: Any) -> dict[str, Any]:
        """A message in JSON mode: the whole answer."""
        async with self.session.post(
            self.messages_url(cid), json={"text": text, **body}, headers=bearer(sub)
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def history(self, cid: str, sub: str = "alice") -> list[dict[str, str]]:
        async with self.session.get(self.messages_url(cid), headers=bearer(sub)) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["messages"]

    def stream(self, cid: str, text: str, sub: str = "alice", **body: Any) -> Any:
        headers = {**bearer(sub), "Accept": "text/event-stream"}
        return self.session.post(self.messages_url(cid), json={"text": text, **body},
                                 headers=headers)  # fmt: skip


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, decoded data) for each server-sent event, as they arrive."""
    event, data = "", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if event or data:
                yield event, json.loads("\n".join(data))
            event, data = "", []
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].lstrip())


async def all_events(response: aiohttp.ClientResponse) -> list[tuple[str, Any]]:
    return [event async for event in sse_events(response)]


def user_texts(fake: FakeOpenAI) -> list[str]:
    """The last user text of every model request, in the order they came."""
    return [
        next(m["content"] for m in reversed(r.messages) if m["role"] == "user")
        for r in fake.chat_requests()
    ]


async def json_error(response: aiohttp.ClientResponse) -> str:
    assert response.content_type == "application/json", await response.text()
    body = await response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


@pytest.fixture
def web_settings(request: pytest.FixtureRequest, key_prefix: str, tmp_path: Path) -> Settings:
    """CORS for ALLOWED_ORIGIN; an indirect parameter is `platforms.web.scope`. (Without one
    the scope is `channel`: a `platforms.web` block in the config replaces the web default,
    `user_in_channel`, with PlatformSettings' own.)"""
    web_block: dict[str, Any] = {"allowed_origins": [ALLOWED_ORIGIN]}
    if scope := getattr(request, "param", None):
        web_block["scope"] = scope
    return make_settings(key_prefix, tmp_path, platforms={"web": web_block})


# Where the core keeps a conversation follows the scope; the API must find it there.
SCOPES = pytest.mark.parametrize(
    "web_settings", ["channel", "user_in_channel", "user"], indirect=True
)


@pytest.fixture
async def api(
    web_settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[Api]:
    """The web adapter with `WEB_JWT_SECRET` (as `chatbot run` mounts it) on a local server."""
    async with (
        running_web(web_settings, secrets, redis, jwt_secret=SECRET) as (adapter, port),
        aiohttp.ClientSession() as session,
    ):
        yield Api(f"http://127.0.0.1:{port}", session, fake_openai, adapter)


# ---- auth ---------------------------------------------------------------------------------

BAD_AUTH = {
    "missing": {},
    "not a bearer": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    "malformed": {"Authorization": "Bearer not.a.jwt"},
    "wrong signature": {"Authorization": f"Bearer {token(secret=OTHER_SECRET)}"},
    "expired": {"Authorization": f"Bearer {token(ttl=-60)}"},
    "no sub": {"Authorization": f"Bearer {token(None)}"},
    "empty sub": {"Authorization": f"Bearer {token('')}"},
    "no exp": {"Authorization": "Bearer " + jwt.encode({"sub": "alice"}, SECRET, "HS256")},
    "alg none": {"Authorization": "Bearer " + jwt.encode({"sub": "alice"}, None, "none")},
}


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
async def test_bad_or_missing_token_is_401_json_and_changes_nothing(
    api: Api, headers: dict[str, str]
) -> None:
    await api.ask("c1", "kept")  # alice has a conversation a bad call must not touch
    requests = len(api.fake.chat_requests())

    async with api.session.post(api.messages_url("c1"), json={"text": "hi"},
                                headers=headers) as response:  # fmt: skip
        assert response.status == 401
        await json_error(response)
    sse = {**headers, "Accept": "text/event-stream"}
    async with api.session.post(api.messages_url("c1"), json={"text": "hi"},
                                headers=sse) as response:  # fmt: skip
        assert response.status == 401
        await json_error(response)
    async with api.session.get(api.messages_url("c1"), headers=headers) as response:
        assert response.status == 401
        await json_error(response)
    async with api.session.delete(api.url("/api/conversations/c1"), headers=headers) as response:
        assert response.status == 401
        await json_error(response)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(api.url("/api/ws"), headers=headers)
    assert refused.value.status == 401

    assert len(api.fake.chat_requests()) == requests  # no model call
    assert await api.history("c1") == [
        {"role": "user", "text": "kept"},
        {"role": "assistant", "text": "echo: kept"},
    ]


async def test_token_in_the_query_and_the_name_claim(api: Api) -> None:
    """A query token only on the WebSocket (proxies log query strings)."""
    url = api.messages_url("c1") + "?token=" + token("alice", name="Alice A.")
    async with api.session.post(url, json={"text": "hi"}) as response:
        assert response.status == 401
        await json_error(response)
    headers = bearer("alice", name="Alice A.")
    async with api.session.post(
        api.messages_url("c1"), json={"text": "hi"}, headers=headers
    ) as response:
        assert response.status == 200
        assert await response.json() == {"text": "echo: hi"}
    assert await api.history("c1") == [
        {"role": "user", "text": "hi"},
        {"role": "assistant", "text": "echo: hi"},
    ]


# ---- answers ------------------------------------------------------------------------------


async def test_sse_streams_several_deltas_then_one_done_with_the_whole_answer(api: Api) -> None:
    api.fake.push(Reply(text=SLOW_ANSWER, tokens_per_second=20))
    async with api.stream("c1", "tell me slowly") as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await all_events(response)

    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1, names
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert set(names) == {"delta", "done"}
    assert len(deltas) >= 3, deltas  # in pieces, not one block at the end
    assert "".join(deltas) == events[-1][1]["text"] == SLOW_ANSWER
    assert len(api.fake.chat_requests()) == 1


async def test_json_mode_answers_with_the_whole_text(api: Api) -> None:
    api.fake.push(Reply(text=SLOW_ANSWER, tokens_per_second=50))
    async with api.session.post(
        api.messages_url("c1"), json={"text": "hello"}, headers=bearer()
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"text": SLOW_ANSWER}


async def test_the_same_id_again_gets_the_same_text_from_one_model_call(api: Api) -> None:
    first = await api.ask("c1", "what time is it", id="msg-1")
    assert first == {"text": "echo: what time is it"}
    again = await api.ask("c1", "what time is it", id="msg-1")
    async with api.stream("c1", "what time is it", id="msg-1") as response:
        events = await all_events(response)

    assert again == first
    assert events[-1] == ("done", first)
    assert "".join(d["text"] for name, d in events if name == "delta") == first["text"]
    assert len(api.fake.chat_requests()) == 1
    assert len(await api.history("c1")) == 2  # one turn, not three


@pytest.mark.parametrize("retry_mode", ["sse", "json"])
async def test_a_retry_while_the_first_is_still_streaming_is_answered_once(
    api: Api, retry_mode: str
) -> None:
    api.fake.push(Reply(text=SLOW_ANSWER, tokens_per_second=20))
    async with api.stream("c1", "slow one", id="msg-1") as first:
        events = sse_events(first)
        assert (await anext(events))[0] == "delta"  # the first is streaming now
        if retry_mode == "sse":
            async with api.stream("c1", "slow one", id="msg-1") as retry:
                assert retry.status == 200
                retried = await asyncio.wait_for(all_events(retry), 10)
            assert [name for name, _ in retried][-1:] == ["done"], retried
            retried_text = retried[-1][1]["text"]
            deltas = "".join(d["text"] for name, d in retried if name == "delta")
            assert deltas == retried_text
        else:
            retried_text = (await api.ask("c1", "slow one", id="msg-1"))["text"]
        rest = [event async for event in events]

    assert rest[-1] == ("done", {"text": SLOW_ANSWER})
    assert retried_text == SLOW_ANSWER
    assert len(api.fake.chat_requests()) == 1
    assert len(await api.history("c1")) == 2


@SCOPES
async def test_history_after_two_turns_oldest_first(api: Api, web_settings: Settings) -> None:
    await api.ask("c1", "first question")
    async with api.stream("c1", "second question") as response:
        await all_events(response)

    assert await api.history("c1") == [
        {"role": "user", "text": "first question"},
        {"role": "assistant", "text": "echo: first question"},
        {"role": "user", "text": "second question"},
        {"role": "assistant", "text": "echo: second question"},
    ]
    if web_settings.scope("web") != "user":  # one conversation per user under `user`
        assert await api.history("other") == []


@SCOPES
async def test_delete_forgets_the_conversation(api: Api) -> None:
    await api.ask("c1", "remember the fruit banana")
    async with api.session.delete(api.url("/api/conversations/c1"), headers=bearer()) as response:
        assert response.status == 204
    assert await api.history("c1") == []

    await api.ask("c1", "which fruit?")
    sent = [m["content"] for m in api.fake.chat_requests()[-1].messages]
    assert not any("banana" in text for text in sent)


@SCOPES
async def test_two_users_with_the_same_conversation_id_never_meet(api: Api) -> None:
    await api.ask("shared", "alice's secret is 1234", sub="alice")
    await api.ask("shared", "bob asks what alice said", sub="bob")

    bob_prompt = json.dumps(api.fake.chat_requests()[-1].messages)
    assert "1234" not in bob_prompt
    assert [m["text"] for m in await api.history("shared", sub="bob")] == [
        "bob asks what alice said",
        "echo: bob asks what alice said",
    ]
    async with api.session.delete(
        api.url("/api/conversations/shared"), headers=bearer("bob")
    ) as response:
        assert response.status == 204
    assert await api.history("shared", sub="bob") == []
    assert [m["text"] for m in await api.history("shared", sub="alice")] == [
        "alice's secret is 1234",
        "echo: alice's secret is 1234",
    ]
    # The same message id under two users is two messages.
    await api.ask("shared", "one", sub="alice", id="same-id")
    assert (await api.ask("shared", "two", sub="bob", id="same-id")) == {"text": "echo: two"}


# ---- request errors and CORS --------------------------------------------------------------


async def test_bad_requests_get_json_errors_and_reach_no_model(api: Api) -> None:
    url, auth = api.messages_url("c1"), {**bearer(), "Content-Type": "application/json"}
    big = json.dumps({"text": "x" * 70_000}).encode()  # over the default 64 KB

    async with api.session.post(url, data=big, headers=auth) as response:
        assert response.status == 413
        await json_error(response)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to go by
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    async with api.session.post(url, data=chunked(), headers=auth) as response:
        assert response.status == 413
        await json_error(response)
    for body in (b"{not json", b"", json.dumps({"txt": "hi"}).encode(), b'"hi"',
                 json.dumps({"text": "hi", "id": 7}).encode()):  # fmt: skip
        async with api.session.post(url, data=body, headers=auth) as response:
            assert response.status == 400, body
            await json_error(response)
    for cid in ("a" * 65, "a.b", "a%20b", "caf%C3%A9"):
        async with api.session.post(
            api.messages_url(cid), json={"text": "hi"}, headers=auth
        ) as response:
            assert response.status == 400, cid
            await json_error(response)
        async with api.session.get(api.messages_url(cid), headers=auth) as response:
            assert response.status == 400, cid
    async with api.session.get(api.messages_url("a" * 64), headers=auth) as response:
        assert response.status == 200
    for method, path in (("GET", "/api/nothing"), ("POST", "/api/conversations"),
                         ("GET", "/api/conversations/c1/messages/1")):  # fmt: skip
        async with api.session.request(method, api.url(path), headers=auth) as response:
            assert response.status == 404, path
            await json_error(response)
    for method, path in (("PUT", "/api/conversations/c1/messages"),
                         ("PATCH", "/api/conversations/c1"),
                         ("GET", "/api/conversations/c1")):  # fmt: skip
        async with api.session.request(method, api.url(path), headers=auth) as response:
            assert response.status in (404, 405), (method, path)
            await json_error(response)

    assert api.fake.chat_requests() == []


async def test_cors_for_allowed_origins_only(api: Api) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    url = api.messages_url("c1")
    async with api.session.options(url, headers={"Origin": ALLOWED_ORIGIN, **preflight}) as r:
        assert r.status in (200, 204)
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed_headers = r.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
    async with api.session.options(
        url, headers={"Origin": "https://evil.example", **preflight}
    ) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Methods" not in r.headers

    # The calls themselves: JSON, an error, and a streamed answer all carry the header; another
    # site's page is refused outright (a WebSocket or a simple POST needs no preflight).
    async with api.session.get(url, headers={**bearer(), "Origin": ALLOWED_ORIGIN}) as r:
        assert r.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
    async with api.session.get(url, headers={"Origin": ALLOWED_ORIGIN}) as r:
        assert r.status == 401
        assert r.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
    sse = {**bearer(), "Origin": ALLOWED_ORIGIN, "Accept": "text/event-stream"}
    async with api.session.post(url, json={"text": "hi"}, headers=sse) as r:
        assert r.headers.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
        await all_events(r)
    requests = len(api.fake.chat_requests())
    evil = {**bearer(), "Origin": "https://evil.example"}
    async with api.session.post(url, json={"text": "hi"}, headers=evil) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        await json_error(r)
    async with api.session.get(api.url(f"/api/ws?token={token()}"), headers=evil) as r:
        assert r.status == 403  # no cross-site WebSocket
    assert len(api.fake.chat_requests()) == requests


# ---- WebSocket ----------------------------------------------------------------------------


async def receive_until_done(ws: aiohttp.ClientWebSocketResponse, ids: set[str]) -> list[dict]:
    """Every frame until each of `ids` got its `done` (or `error`)."""
    frames: list[dict] = []
    pending = set(ids)
    while pending:
        frame = await asyncio.wait_for(ws.receive_json(), 15)
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            pending.discard(frame["id"])
    return frames


async def test_websocket_answers_two_conversations_at_once(api: Api) -> None:
    api.fake.default = Reply(tokens_per_second=20)  # echo, slowly
    one = "one " + " ".join(f"a{i}" for i in range(10))
    two = "two " + " ".join(f"b{i}" for i in range(10))
    async with api.session.ws_connect(api.url(f"/api/ws?token={token()}")) as ws:
        await ws.send_json({"type": "message", "conversation": "c1", "id": "m1", "text": one})
        await ws.send_json({"type": "message", "conversation": "c2", "id": "m2", "text": two})
        frames = await receive_until_done(ws, {"m1", "m2"})

    assert {f["type"] for f in frames} == {"delta", "done"}, frames
    for ident, text in (("m1", one), ("m2", two)):
        mine = [f for f in frames if f["id"] == ident]
        assert mine[-1] == {"type": "done", "id": ident, "text": f"echo: {text}"}
        deltas = [f["text"] for f in mine if f["type"] == "delta"]
        assert len(deltas) >= 3 and "".join(deltas) == f"echo: {text}"
    kinds = [(f["id"], f["type"]) for f in frames]
    # In flight together: each got a delta before the other's done.
    assert kinds.index(("m2", "delta")) < kinds.index(("m1", "done"))
    assert kinds.index(("m1", "delta")) < kinds.index(("m2", "done"))


async def test_websocket_answers_one_conversations_messages_in_order(api: Api) -> None:
    api.fake.default = Reply(tokens_per_second=50)
    texts = ["first message", "second message", "third message"]
    async with api.session.ws_connect(
        api.url("/api/ws"), headers=bearer()
    ) as ws:  # the header works too
        for index, text in enumerate(texts):
            frame = {"type": "message", "conversation": "c1", "id": f"m{index}", "text": text}
            await ws.send_json(frame)
        frames = await receive_until_done(ws, {"m0", "m1", "m2"})

    dones = [f for f in frames if f["type"] == "done"]
    assert dones == [
        {"type": "done", "id": f"m{i}", "text": f"echo: {text}"} for i, text in enumerate(texts)
    ]
    assert user_texts(api.fake) == texts
    # Each one was asked after the one before it had been answered.
    for index, request in enumerate(api.fake.chat_requests()):
        contents = [m["content"] for m in request.messages]
        assert [f"echo: {t}" in contents for t in texts] == [i < index for i in range(3)]
    assert [m["text"] for m in await api.history("c1")] == [
        text for t in texts for text in (t, f"echo: {t}")
    ]


async def test_websocket_bad_frames_get_error_frames_and_the_socket_lives(api: Api) -> None:
    async with api.session.ws_connect(api.url(f"/api/ws?token={token()}")) as ws:
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=5))["type"] == "error"
        await ws.send_json({"type": "message", "conversation": "bad id", "id": "x", "text": "t"})
        assert (await ws.receive_json(timeout=5))["type"] == "error"
        await ws.send_json({"type": "message", "conversation": "c1", "id": "ok", "text": "hi"})
        frames = await receive_until_done(ws, {"ok"})
    assert frames[-1] == {"type": "done", "id": "ok", "text": "echo: hi"}
    assert len(api.fake.chat_requests()) == 1


# ---- a client that leaves -----------------------------------------------------------------


async def test_a_client_that_leaves_mid_stream_still_gets_the_answer_recorded(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    api.fake.push(Reply(text=SLOW_ANSWER, tokens_per_second=20))
    async with api.stream("c1", "a question I will not wait for") as response:
        events = sse_events(response)
        assert (await anext(events))[0] == "delta"
        response.close()  # hang up mid-stream

    async def recorded() -> bool:
        return [m["text"] for m in await api.history("c1")] == [
            "a question I will not wait for",
            SLOW_ANSWER,
        ]

    await wait_for(recorded, timeout=10, every=0.1)
    await wait_for(lambda: not api.adapter._tasks, timeout=5)  # the turn finished
    assert (await api.ask("c1", "still there?")) == {"text": "echo: still there?"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ---- latency ------------------------------------------------------------------------------


async def test_time_to_first_delta_over_50_sse_requests(api: Api) -> None:
    """Measured, not asserted: POST sent -> first `delta` event read, with the fake model
    answering at once (`pytest -s` shows the numbers)."""
    samples: list[float] = []
    for index in range(50):
        started = time.perf_counter()
        async with api.stream(f"lat{index % 5}", f"ping {index}") as response:
            events = sse_events(response)
            name, _ = await anext(events)
            samples.append(time.perf_counter() - started)
            assert name == "delta"
            async for _ in events:
                pass
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))] * 1000
    print(f"\nPOST -> first delta over {len(samples)} SSE requests: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {samples[-1] * 1000:.1f} ms")  # fmt: skip


# ---- the commands -------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = bot_process_env(**extra)
    if "WEB_JWT_SECRET" not in extra:
        env.pop("WEB_JWT_SECRET", None)  # a developer's own must not leak in
    return env


async def _chatbot(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_chatbot_token_prints_a_signed_token(tmp_path: Path) -> None:
    code, out, err = await _chatbot(
        "token", "alice", "--name", "Alice", "--ttl", "30m",
        env=_env(WEB_JWT_SECRET=SECRET), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["name"] == "Alice"
    assert abs(claims["exp"] - (time.time() + 1800)) < 30
    assert SECRET not in out + err

    code, out, err = await _chatbot("token", "alice", env=_env(), cwd=tmp_path)
    assert code == 2
    assert "WEB_JWT_SECRET" in err and out == ""
    assert "Traceback" not in err


async def test_chatbot_web_refuses_other_hosts_without_a_secret(tmp_path: Path) -> None:
    code, _, err = await _chatbot("web", "--host", "0.0.0.0", env=_env(), cwd=tmp_path)
    assert code == 2
    assert "WEB_JWT_SECRET" in err and "0.0.0.0" in err
    assert "Traceback" not in err


async def test_chatbot_web_serves_the_page_and_answers_without_a_token(
    tmp_path: Path, fake_openai: FakeOpenAI, redis_url: str, redis: Any, key_prefix: str
) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nredis:\n  key_prefix: {key_prefix}\n"
        "llm:\n  model: gpt-test\n  models: [gpt-test]\n  chunk_timeout: 3\n"
        "context:\n  tokenizer: estimate\n"
    )
    env = _env(OPENAI_BASE_URL=fake_openai.base_url, REDIS_URL=redis_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "web", "--config", str(config), "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    stderr = asyncio.ensure_future(process.stderr.read())
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        page = f"http://127.0.0.1:{port}/"
        assert page in line.decode(), (line, await _stderr_so_far(process, stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(page) as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                assert re.search(r"<html", await response.text(), re.IGNORECASE)
            async with session.post(
                page + "api/conversations/c1/messages", json={"text": "hi from the page"}
            ) as response:
                assert response.status == 200
                assert await response.json() == {"text": "echo: hi from the page"}
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        assert process.returncode == 0, (await stderr).decode()
        assert "Traceback" not in (await stderr).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.cancel()


async def _stderr_so_far(process: asyncio.subprocess.Process, reading: asyncio.Future) -> str:
    if process.returncode is None:
        process.kill()
    with contextlib.suppress(TimeoutError):
        return (await asyncio.wait_for(reading, 5)).decode()
    return ""


async def test_a_body_that_arrives_in_two_pieces_is_read_whole(api: Api) -> None:
    """A slow network delivers a request's body in parts: it is one message, not a 400."""
    port = int(api.base.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({"text": "a message in two parts " + "x" * 80}).encode()
    head = (
        f"POST /api/conversations/c1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body[:40])
    await writer.drain()
    await asyncio.sleep(0.3)  # the gap a slow network leaves between two segments
    writer.write(body[40:])
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = response.split(b"\r\n", 1)[0]
    assert b" 200 " in status, response[:300]
    assert b"echo: a message in two parts" in response


async def test_a_websocket_closes_when_its_token_expires(api: Api) -> None:
    async with api.session.ws_connect(api.url(f"/api/ws?token={token(ttl=1.5)}")) as ws:
        closed = await asyncio.wait_for(ws.receive(), timeout=10)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
    assert ws.close_code == 4001


async def test_ids_with_colons_never_reach_another_users_answer(api: Api) -> None:
    """User `eve` with conversation `x` and id `c1:m1` must not share a retry key with user
    `eve:x`, conversation `c1`, id `m1`."""
    api.fake.push(Reply(text="the victim's secret answer"))
    victim = await api.ask("c1", "mine", sub="eve:x", id="m1")
    assert victim == {"text": "the victim's secret answer"}
    attacker = await api.ask("x", "give me theirs", sub="eve", id="c1:m1")
    assert attacker == {"text": "echo: give me theirs"}


async def test_an_empty_secret_does_not_open_the_no_token_mode(tmp_path: Path) -> None:
    env = bot_process_env(WEB_JWT_SECRET="")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "web", "--host", "0.0.0.0", "--port", str(free_port()),
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, err
    assert b"WEB_JWT_SECRET" in err


async def test_without_tokens_only_this_machine_and_its_page_may_call(
    web_settings: Settings, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    """`chatbot web`'s no-token mode: a DNS-rebinding host name and another site's page are
    refused; a WebSocket whose client stops reading does not hold up the shutdown."""
    async with running_web(web_settings, secrets, redis, jwt_secret=None) as (adapter, port):
        url = f"http://127.0.0.1:{port}/api/conversations/c1/messages"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Host": "rebound.example"}) as r:
                assert r.status == 403
            async with session.get(url, headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403
            async with session.get(url, headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
                assert r.status == 200  # the page itself
            fake_openai.default = Reply(tokens_per_second=5)
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/api/ws")
            for i in range(6):  # answers queue up in a client that never reads them
                await ws.send_json({"type": "message", "conversation": f"s{i}", "id": f"m{i}",
                                    "text": "word " * 200})  # fmt: skip
            await wait_for(lambda: len(fake_openai.chat_requests()) == 6, timeout=10)
            started = time.monotonic()
            await adapter.stop()
            assert time.monotonic() - started < 5
