"""Approvals in the terminal (`chatbot chat`): the request and `Approve? [y/n]` are printed,
and the next y / yes / n / no typed decides it. The real console adapter over the real core on
the test Redis and the fake OpenAI server, typed at line by line; and `chatbot chat` as a
process."""

from __future__ import annotations

import asyncio
import io
import json
import queue
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from adapters.console import ConsoleChat, still_waiting
from bots.assembly import build_core
from core.config import Secrets, Settings
from tests.conftest import make_settings
from tests.fakes.openai_server import Call, FakeOpenAI, Reply
from tests.helpers import bot_process_env, wait_for

ASK = "Approve? [y/n]"


def approving(key_prefix: str, tmp_path: Path, ttl: float = 600.0) -> Settings:
    return make_settings(
        key_prefix, tmp_path,
        tools={"enabled": ["calculator"], "approve": ["calc*"], "approval_ttl": ttl},
    )  # fmt: skip


def asks_for_the_sum(fake: FakeOpenAI) -> None:
    fake.push(Reply(text="Let me work that out.",
                    tool_calls=[Call("calculator", {"expression": "6*7"})]))  # fmt: skip


class Keyboard:
    """The console's input: lines typed one by one while the chat runs."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()

    def readline(self) -> str:
        try:
            return self.lines.get(timeout=30)
        except queue.Empty:
            return ""  # end of input: the chat ends


class Terminal:
    """Types lines and reads what the chat printed."""

    def __init__(self, keyboard: Keyboard, out: io.StringIO) -> None:
        self.keyboard, self.out = keyboard, out
        self.seen = 0  # what `expect` has already matched

    def say(self, line: str) -> None:
        self.keyboard.lines.put(line + "\n")

    async def expect(self, text: str, timeout: float = 10) -> str:
        """Everything printed since the last expectation, once it holds `text`."""
        await wait_for(lambda: text in self.out.getvalue()[self.seen :], timeout=timeout)
        start = self.seen
        self.seen = self.out.getvalue().index(text, start) + len(text)
        return self.out.getvalue()[start : self.seen]


@asynccontextmanager
async def terminal(
    settings: Settings, secrets: Secrets, redis: Any, *, recover: bool = False
) -> AsyncIterator[Terminal]:
    """`chatbot chat` in this process: the core, then the console (asking again for what is
    still waiting, as the command does)."""
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, secrets, redis=redis)
        keyboard, out = Keyboard(), io.StringIO()
        waiting = await still_waiting(core.store, "console") if recover else []
        stdin: Any = keyboard  # reads like a TextIO
        chat = ConsoleChat(core.handler, user="console", stdin=stdin, out=out,
                           on_decision=core.chat.decide, waiting=waiting)  # fmt: skip
        running = asyncio.create_task(chat.run())
        try:
            yield Terminal(keyboard, out)
        finally:
            keyboard.lines.put("")  # Ctrl-D
            await asyncio.wait_for(running, 10)


async def test_y_approves_and_the_answer_goes_on(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    async with terminal(approving(key_prefix, tmp_path), secrets, redis) as chat:
        asks_for_the_sum(fake_openai)
        chat.say("what is 6 times 7?")
        shown = await chat.expect(ASK)
        assert "bot> Let me work that out.\n" in shown
        assert "bot> 🔐 **Approval needed**" in shown and '"expression": "6*7"' in shown
        assert len(fake_openai.chat_requests()) == 1  # nothing ran yet

        fake_openai.push(Reply(text="6 times 7 is 42."))
        chat.say("y")
        shown = await chat.expect("bot> 6 times 7 is 42.\n")
        assert "bot> ✅ Approved by console: `calculator`\n" in shown
        assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]

        chat.say("y")  # nothing waits any more: a message like any other
        await chat.expect("bot> echo: y\n")
    assert len(fake_openai.chat_requests()) == 3


async def test_another_line_is_a_message_and_the_request_waits_then_no_denies(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    async with terminal(approving(key_prefix, tmp_path), secrets, redis) as chat:
        asks_for_the_sum(fake_openai)
        chat.say("what is 6 times 7?")
        await chat.expect(ASK)
        chat.say("maybe later")
        shown = await chat.expect("(still waiting for your approval of `calculator`: y or n)")
        assert "bot> echo: maybe later\n" in shown
        assert len(fake_openai.chat_requests()) == 2  # the message, not the tool

        fake_openai.push(Reply(text="No calculator, then."))
        chat.say("No")
        shown = await chat.expect("bot> No calculator, then.\n")
        assert "bot> ❌ Denied by console: `calculator` was not run.\n" in shown
        told = fake_openai.chat_requests()[-1].messages[-1]["content"]
        assert json.loads(told) == {"error": "not run: the user denied it"}


async def test_a_yes_after_expiry_says_so_and_the_model_is_told(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    settings = approving(key_prefix, tmp_path, ttl=0.2)
    async with terminal(settings, secrets, redis) as chat:
        asks_for_the_sum(fake_openai)
        chat.say("what is 6 times 7?")
        await chat.expect(ASK)
        asked = time.time()
        await wait_for(lambda: time.time() > asked + 0.3)
        fake_openai.push(Reply(text="It expired, so no sum."))
        chat.say("yes")
        shown = await chat.expect("bot> It expired, so no sum.\n")
        assert "bot> ⌛ This request expired: `calculator` was not run.\n" in shown
        told = fake_openai.chat_requests()[-1].messages[-1]["content"]
        assert json.loads(told) == {"error": "not run: the approval request expired"}


async def test_a_restarted_chat_asks_again_and_the_yes_still_works(
    key_prefix: str, tmp_path: Path, secrets: Secrets, fake_openai: FakeOpenAI, redis: Any
) -> None:
    settings = approving(key_prefix, tmp_path)
    async with terminal(settings, secrets, redis) as chat:
        asks_for_the_sum(fake_openai)
        chat.say("what is 6 times 7?")
        await chat.expect(ASK)
    async with terminal(settings, secrets, redis, recover=True) as chat:  # a new process
        shown = await chat.expect(ASK)
        assert "Still waiting for your approval" in shown and "`calculator`" in shown
        fake_openai.push(Reply(text="42, after the restart."))
        chat.say("y")
        shown = await chat.expect("bot> 42, after the restart.\n")
        assert "bot> ✅ Approved by console: `calculator`\n" in shown
        assert "42" in fake_openai.chat_requests()[-1].messages[-1]["content"]
    async with terminal(settings, secrets, redis, recover=True) as chat:
        shown = await chat.expect("you> ")  # what was still waiting is asked before this
    assert ASK not in shown  # decided: not asked again


async def test_chatbot_chat_wires_the_yes(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """The command itself: `chatbot chat --memory`, typed at through a pipe."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "llm:\n  model: gpt-test\n  models: [gpt-test]\n  chunk_timeout: 3\n"
        "context:\n  tokenizer: estimate\n"
        "tools:\n  enabled: [calculator]\n  approve: ['calc*']\n"
    )
    asks_for_the_sum(fake_openai)
    fake_openai.push(Reply(text="6 times 7 is 42."))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "chat", "--memory", "--config", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=bot_process_env(OPENAI_BASE_URL=fake_openai.base_url),
        cwd=tmp_path,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(b"what is 6 times 7?\ny\n"), 60)
    assert process.returncode == 0, err.decode()
    shown = out.decode()
    assert ASK in shown and "bot> ✅ Approved by console: `calculator`" in shown
    assert shown.index(ASK) < shown.index("bot> 6 times 7 is 42.")
