"""Approve and Deny on the web channel: the real adapter (JWT mode) over the real core, the
test Redis and the fake OpenAI server, pressed with a real aiohttp client: the `approval` event
with the answer, `POST /api/approvals/{id}` (SSE and JSON) and the WebSocket's `decide`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.config import Secrets, Settings
from tests.conftest import make_settings
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import wait_for
from tests.integration.test_web_api import SECRET, all_events, bearer, json_error, token
from tests.web_channel import running_web

NOT_YOURS = "This is not yours to decide: Alice (or an admin) decides."
GONE = "This request was already decided, or has expired."


def approving(key_prefix: str, tmp_path: Path, ttl: float = 600.0) -> Settings:
    return make_settings(
        key_prefix, tmp_path,
        tools={"enabled": ["calculator"], "approve": ["calc*"], "approval_ttl": ttl},
        platforms={"web": {"admins": ["root"]}},
    )  # fmt: skip


@dataclass
class Web:
    base: str
    session: aiohttp.ClientSession
    fake: FakeOpenAI

    def asks_for_the_sum(self) -> None:
        self.fake.push(Reply(text="Let me work that out.",
                             tool_calls=[Call("calculator", {"expression": "6*7"})]))  # fmt: skip

    async def ask(self, text: str, sub: str = "alice", cid: str = "c1") -> list[tuple[str, Any]]:
        """A message as server-sent events."""
        headers = {**bearer(sub, name=sub.title()), "Accept": "text/event-stream"}
        url = f"{self.base}/api/conversations/{cid}/messages"
        async with self.session.post(url, json={"text": text}, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await all_events(response)

    def press(self, approval_id: str, approve: Any, sub: str = "alice", sse: bool = True) -> Any:
        headers = bearer(sub, name=sub.title())
        if sse:
            headers["Accept"] = "text/event-stream"
        url = f"{self.base}/api/approvals/{approval_id}"
        return self.session.post(url, json={"approve": approve}, headers=headers)

    async def history(self, sub: str = "alice", cid: str = "c1") -> list[str]:
        url = f"{self.base}/api/conversations/{cid}/messages"
        async with self.session.get(url, headers=bearer(sub)) as response:
            return [m["text"] for m in (await response.json())["messages"]]


@pytest.fixture
async def web(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> AsyncIterator[Web]:
    settings = approving(key_prefix, tmp_path)
    async with (
        running_web(settings, secrets, redis, jwt_secret=SECRET) as (_, port),
        aiohttp.ClientSession() as session,
    ):
        yield Web(f"http://127.0.0.1:{port}", session, fake_openai)


def only(events: list[tuple[str, Any]], name: str) -> list[Any]:
    return [data for event, data in events if event == name]


async def test_the_request_comes_with_the_answer_and_a_press_streams_the_rest(web: Web) -> None:
    web.asks_for_the_sum()
    events = await web.ask("what is 6 times 7?")
    [request] = only(events, "approval")
    assert request["tool"] == "calculator" and "`calculator`" in request["text"]
    assert '"expression": "6*7"' in request["text"] and "Asked by Alice" in request["text"]
    assert events[-1] == ("done", {"text": "Let me work that out."})
    assert len(web.fake.chat_requests()) == 1  # nothing ran yet

    web.fake.push(Reply(text="6 times 7 is 42."))
    async with web.press(request["id"], True) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await all_events(response)
    assert events[0] == ("settled", {"id": request["id"], "outcome": "approved",
                                     "text": "✅ Approved by Alice: `calculator`"})  # fmt: skip
    assert "".join(d["text"] for d in only(events, "delta")) == "6 times 7 is 42."
    assert events[-1] == ("done", {"text": "6 times 7 is 42."})
    tool_result = web.fake.chat_requests()[-1].messages[-1]
    assert tool_result["role"] == "tool" and "42" in tool_result["content"]
    assert await web.history() == [
        "what is 6 times 7?",
        "Let me work that out.\n\n[waiting for approval: `calculator`]",
        "6 times 7 is 42.",
    ]


async def test_someone_else_gets_403_and_nothing_runs_an_admin_may_decide(web: Web) -> None:
    web.asks_for_the_sum()
    [request] = only(await web.ask("what is 6 times 7?"), "approval")
    async with web.press(request["id"], True, sub="mallory") as response:
        assert response.status == 403
        assert await json_error(response) == NOT_YOURS
    assert len(web.fake.chat_requests()) == 1

    web.fake.push(Reply(text="The admin said no."))
    async with web.press(request["id"], False, sub="root", sse=False) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer == {"outcome": "denied", "text": "The admin said no.",
                      "settled": "❌ Denied by Root: `calculator` was not run."}  # fmt: skip
    told = web.fake.chat_requests()[-1].messages[-1]["content"]
    assert json.loads(told) == {"error": "not run: the user denied it"}
    assert (await web.history())[-1] == "The admin said no."  # in alice's conversation


async def test_json_mode_lists_the_request_and_deny_tells_the_model(web: Web) -> None:
    web.asks_for_the_sum()
    url = f"{web.base}/api/conversations/c1/messages"
    async with web.session.post(url, json={"text": "6*7?"}, headers=bearer()) as response:
        answer = await response.json()
    [request] = answer["approvals"]
    assert answer["text"] == "Let me work that out." and request["tool"] == "calculator"

    web.fake.push(Reply(text="Fine, no calculator."))
    async with web.press(request["id"], False, sse=False) as response:
        assert await response.json() == {
            "outcome": "denied", "text": "Fine, no calculator.",
            "settled": "❌ Denied by Alice: `calculator` was not run.",
        }  # fmt: skip
    told = web.fake.chat_requests()[-1].messages[-1]["content"]
    assert json.loads(told) == {"error": "not run: the user denied it"}


async def test_a_double_press_continues_once_and_the_second_gets_410(web: Web) -> None:
    web.asks_for_the_sum()
    [request] = only(await web.ask("what is 6 times 7?"), "approval")
    web.fake.push(Reply(text="42."))

    async def press() -> tuple[int, Any]:
        async with web.press(request["id"], True) as response:
            if response.status != 200:
                return response.status, await response.json()
            return 200, await all_events(response)

    results = sorted(await asyncio.gather(press(), press()), key=lambda r: r[0])
    assert [status for status, _ in results] == [200, 410]
    assert results[1][1] == {"error": GONE}
    assert results[0][1][-1] == ("done", {"text": "42."})
    assert len(web.fake.chat_requests()) == 2  # one continuation


async def test_a_press_after_expiry_says_so_and_the_model_is_told(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    settings = approving(key_prefix, tmp_path, ttl=0.2)
    async with (
        running_web(settings, secrets, redis, jwt_secret=SECRET) as (_, port),
        aiohttp.ClientSession() as session,
    ):
        web = Web(f"http://127.0.0.1:{port}", session, fake_openai)
        web.asks_for_the_sum()
        [request] = only(await web.ask("what is 6 times 7?"), "approval")
        asked = time.time()
        await wait_for(lambda: time.time() > asked + 0.3)
        fake_openai.push(Reply(text="That request expired."))
        async with web.press(request["id"], True) as response:
            events = await all_events(response)
        expired = "⌛ This request expired: `calculator` was not run."
        settled = {"id": request["id"], "outcome": "expired", "text": expired}
        assert events[0] == ("settled", settled)
        assert events[-1] == ("done", {"text": "That request expired."})
        told = fake_openai.chat_requests()[-1].messages[-1]["content"]
        assert json.loads(told) == {"error": "not run: the approval request expired"}


async def test_a_restart_between_the_request_and_the_press_loses_nothing(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with aiohttp.ClientSession() as session:
        async with running_web(settings, secrets, redis, jwt_secret=SECRET) as (_, port):
            web = Web(f"http://127.0.0.1:{port}", session, fake_openai)
            web.asks_for_the_sum()
            [request] = only(await web.ask("what is 6 times 7?"), "approval")
        async with running_web(settings, secrets, redis, jwt_secret=SECRET) as (_, port):
            web = Web(f"http://127.0.0.1:{port}", session, fake_openai)  # another process
            fake_openai.push(Reply(text="42, after the restart."))
            async with web.press(request["id"], True) as response:
                events = await all_events(response)
            assert events[-1] == ("done", {"text": "42, after the restart."})
            assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]


async def test_the_websocket_gets_the_request_and_decides_with_a_frame(web: Web) -> None:
    async def frames_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[Any]:
        frames: list[Any] = []
        while not frames or frames[-1]["type"] != kind:
            frames.append(await asyncio.wait_for(ws.receive_json(), 10))
        return frames

    url = f"{web.base}/api/ws?token="
    async with (
        web.session.ws_connect(url + token("alice", name="Alice")) as alice,
        web.session.ws_connect(url + token("mallory")) as mallory,
    ):
        web.asks_for_the_sum()
        await alice.send_json({"type": "message", "conversation": "c1", "id": "m1",
                               "text": "what is 6 times 7?"})  # fmt: skip
        frames = await frames_until(alice, "done")
        [request] = [f for f in frames if f["type"] == "approval"]
        assert request["message"] == "m1" and request["tool"] == "calculator"
        assert frames[-1] == {"type": "done", "id": "m1", "text": "Let me work that out."}

        await mallory.send_json({"type": "decide", "id": request["id"], "approve": True})
        assert await asyncio.wait_for(mallory.receive_json(), 10) == {
            "type": "notice", "id": request["id"], "text": NOT_YOURS,
        }  # fmt: skip
        await alice.send_json({"type": "decide", "id": request["id"], "approve": "yes"})
        assert (await asyncio.wait_for(alice.receive_json(), 10))["type"] == "error"
        assert len(web.fake.chat_requests()) == 1

        web.fake.push(Reply(text="6 times 7 is 42."))
        await alice.send_json({"type": "decide", "id": request["id"], "approve": True})
        frames = await frames_until(alice, "done")
        assert frames[0] == {"type": "settled", "id": request["id"], "outcome": "approved",
                             "text": "✅ Approved by Alice: `calculator`"}  # fmt: skip
        assert {f["id"] for f in frames} == {request["id"]}  # the continuation's frames
        assert frames[-1]["text"] == "6 times 7 is 42."

        await alice.send_json({"type": "decide", "id": request["id"], "approve": True})
        assert await asyncio.wait_for(alice.receive_json(), 10) == {
            "type": "notice", "id": request["id"], "text": GONE,
        }  # fmt: skip
    assert len(web.fake.chat_requests()) == 2


async def test_a_press_needs_a_token_and_a_yes_or_no(web: Web) -> None:
    url = f"{web.base}/api/approvals/abc"
    async with web.session.post(url, json={"approve": True}) as response:
        assert response.status == 401
    for body in ({}, {"approve": "yes"}, [True]):
        async with web.session.post(url, json=body, headers=bearer()) as response:
            assert response.status == 400, body
            await json_error(response)
    async with web.press("no-such-request", True) as response:
        assert response.status == 410
        assert await json_error(response) == GONE
