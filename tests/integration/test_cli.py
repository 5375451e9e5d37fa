"""The `chatbot` command as an operator runs it: real processes, the embedded Redis, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from bots.assembly import build_core
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import (
    RecordingResponder,
    bot_process_env,
    journal_entries,
    journal_owners_gone,
    user_message,
    wait_for,
)
from tests.redis_server import free_port

SECRET_KEY = "sk-test-SECRET-abcdef123456"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return bot_process_env(**extra)


def _config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "llm:\n  model: gpt-test\n  models: [gpt-test]\n  chunk_timeout: 3\n"
        "context:\n  tokenizer: estimate\n" + text
    )
    return path


async def _chatbot(
    *args: str, env: dict[str, str], stdin: bytes | None = None, cwd: Path, timeout: float = 60
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_console_conversation_survives_a_restart(tmp_path: Path, fake_openai: FakeOpenAI):
    env = _env(tmp_path, OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY=SECRET_KEY)
    config = _config(tmp_path)
    code, out, err = await _chatbot(
        "chat", "--config", str(config), env=env, cwd=tmp_path,
        stdin=b"remember the fruit banana\n/persona\n",
    )  # fmt: skip
    assert code == 0, err
    assert "bot> echo: remember the fruit banana" in out
    assert "Persona: *default*" in out

    code, out, err = await _chatbot(
        "chat", "--config", str(config), env=env, cwd=tmp_path, stdin=b"which fruit?\n"
    )
    assert code == 0, err
    assert "bot> echo: which fruit?" in out
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages]
    assert "remember the fruit banana" in sent  # the history came back from the embedded Redis
    assert (tmp_path / "data" / "appendonly.aof").exists() or any((tmp_path / "data").iterdir())
    assert SECRET_KEY not in out + err


async def test_run_serves_healthz_and_stops_cleanly_on_sigterm(
    tmp_path: Path, fake_openai: FakeOpenAI, redis_url: str, redis, key_prefix: str
):
    port = free_port()
    env = _env(
        tmp_path,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY=SECRET_KEY,
        REDIS_URL=redis_url,
        CHATBOT_HOST="127.0.0.1",
        CHATBOT_PORT=str(port),
    )
    config = _config(tmp_path, f"redis:\n  key_prefix: {key_prefix}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    status: dict[str, object] = {}
    async with aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    status.update(await response.json())
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, timeout=20, every=0.1)
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            ready = await response.json()
    assert status["status"] == "ok"
    assert status["redis"] == "up"
    assert ready["redis"] == "up"
    loop = asyncio.get_running_loop()
    started = loop.time()
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    assert loop.time() - started < 10
    assert SECRET_KEY not in err.decode()


async def test_console_sigterm_finishes_the_answer_in_flight(
    tmp_path: Path, fake_openai: FakeOpenAI
):
    fake_openai.push(Reply(text="a slow but complete answer", ttft=0.5, tokens_per_second=10))
    env = _env(tmp_path, OPENAI_BASE_URL=fake_openai.base_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "chat", "--config", str(_config(tmp_path)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(b"tell me slowly\n")
    await process.stdin.drain()
    await wait_for(lambda: len(fake_openai.chat_requests()) == 1, timeout=20)
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    assert "a slow but complete answer" in out.decode()


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("context:\n  max_turns: zero\n", "context.max_turns: Input should be a valid integer"),
        ("personas:\n  x: {}\n", "personas.x.system_prompt: Field required"),
        ("slack_bot_token: xoxb-1\n", "slack_bot_token: unknown setting; secrets are read only"),
    ],
)
async def test_bad_config_exits_2_naming_key_and_file(
    tmp_path: Path, config_text: str, expected: str
):
    path = tmp_path / "bad.yaml"
    path.write_text(config_text)
    code, _, err = await _chatbot("run", "--config", str(path), env=_env(tmp_path), cwd=tmp_path)
    assert code == 2
    assert f"{path}: {expected}" in err
    assert "Traceback" not in err
    assert "xoxb-1" not in err


async def test_no_model_configured_says_what_to_set(tmp_path: Path):
    code, _, err = await _chatbot(
        "chat", "--config", str(_config(tmp_path)), env=_env(tmp_path), cwd=tmp_path, stdin=b""
    )
    assert code == 2
    assert "set OPENAI_API_KEY" in err and "OPENAI_BASE_URL" in err
    assert "Traceback" not in err


async def test_unreachable_redis_exits_1_naming_url_without_password(tmp_path: Path):
    port = free_port()
    env = _env(
        tmp_path, OPENAI_API_KEY=SECRET_KEY, REDIS_URL=f"redis://:hunter2pw@127.0.0.1:{port}/0",
        CHATBOT_REDIS__MODE="standalone",
    )  # fmt: skip
    code, _, err = await _chatbot("run", "--config", str(_config(tmp_path)), env=env, cwd=tmp_path)
    assert code == 1
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in err
    assert "hunter2pw" not in err and SECRET_KEY not in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err


async def test_dotenv_file_is_read(tmp_path: Path, fake_openai: FakeOpenAI):
    (tmp_path / ".env").write_text(f"OPENAI_BASE_URL={fake_openai.base_url}\n")
    code, out, err = await _chatbot(
        "chat", "--config", str(_config(tmp_path)), env=_env(tmp_path), cwd=tmp_path, stdin=b"hi\n"
    )
    assert code == 0, err
    assert "echo: hi" in out
    assert json.dumps(fake_openai.chat_requests()[-1].body["model"]) == '"gpt-test"'


async def test_sigkill_mid_answer_is_answered_after_restart(
    tmp_path: Path, fake_openai: FakeOpenAI, redis_url: str, redis, key_prefix: str
):
    """The process dies while streaming; the next start answers that message, once."""
    fake_openai.push(Reply(text="never finished " * 20, ttft=0.2, tokens_per_second=5))
    env = _env(tmp_path, OPENAI_BASE_URL=fake_openai.base_url, REDIS_URL=redis_url)
    config = _config(
        tmp_path, f"redis:\n  key_prefix: {key_prefix}\n  heartbeat_ttl: 1\n  lock_ttl: 1\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "chat", "--config", str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(b"the question that was interrupted\n")
    await process.stdin.drain()
    await wait_for(lambda: len(fake_openai.chat_requests()) == 1, timeout=20)
    process.kill()
    await process.wait()

    assert len(await journal_entries(redis, key_prefix)) == 1

    await wait_for(lambda: journal_owners_gone(redis, key_prefix), timeout=10, every=0.1)
    code, out, err = await _chatbot(
        "chat", "--config", str(config), env=env, cwd=tmp_path, stdin=b"", timeout=60
    )
    assert code == 0, err
    assert "restarted while answering" in out
    assert "echo: the question that was interrupted" in out
    assert len(fake_openai.chat_requests()) == 2
    code, out, err = await _chatbot(
        "chat", "--config", str(config), env=env, cwd=tmp_path, stdin=b""
    )
    assert "restarted while answering" not in out  # answered once, never again
    assert len(fake_openai.chat_requests()) == 2
    assert len(await journal_entries(redis, key_prefix)) == 0


async def test_chat_in_memory_needs_no_redis_and_remembers_within_the_session(
    tmp_path: Path, fake_openai: FakeOpenAI
):
    env = _env(tmp_path, OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY=SECRET_KEY,
               REDIS_URL="redis://127.0.0.1:1")  # fmt: skip  # would fail if it were used
    code, out, err = await _chatbot(
        "chat", "--memory", "--config", str(_config(tmp_path)), env=env, cwd=tmp_path,
        stdin=b"remember the fruit banana\nwhich fruit?\n",
    )  # fmt: skip
    assert code == 0, err
    assert "bot> echo: which fruit?" in out
    sent = [m["content"] for m in fake_openai.chat_requests()[-1].messages]
    assert "remember the fruit banana" in sent  # the history, kept in the process
    assert not (tmp_path / "data").exists()  # no embedded Redis was started


async def test_privacy_report_names_each_kind_of_data_and_its_ttl(tmp_path: Path):
    config = _config(
        tmp_path, "privacy:\n  mask: [email, card]\n  profile_ttl_days: 40\n"
        "context:\n  ttl_days: 3\n  tokenizer: estimate\n",
    )  # fmt: skip
    config.write_text(config.read_text().replace("context:\n  tokenizer: estimate\n", "", 1))
    code, out, err = await _chatbot(
        "privacy", "report", "--config", str(config), env=_env(tmp_path), cwd=tmp_path
    )
    assert code == 0, err
    assert "3 days after the last turn (context.ttl_days)" in out
    assert "40 days after the last change (privacy.profile_ttl_days)" in out
    assert "delivery ids seen" in out and "1 day" in out
    assert "Masked before the model, the history, the cache and the logs: email, card." in out


async def test_privacy_export_and_erase_answer_a_persons_request(
    tmp_path: Path, fake_openai: FakeOpenAI, redis_url: str, redis, key_prefix: str
):
    """An operator answers an access request (export) and an erasure request (erase) for one
    person: the other person in the shared channel keeps their turns."""
    config = _config(tmp_path, f"redis:\n  key_prefix: {key_prefix}\n")
    env = _env(tmp_path, OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY=SECRET_KEY,
               REDIS_URL=redis_url)  # fmt: skip
    settings = make_settings(key_prefix, tmp_path)
    async with AsyncExitStack() as stack:
        core = await build_core(stack, settings, Secrets(openai_base_url=fake_openai.base_url),
                                redis=redis)  # fmt: skip
        for user, text in (("alice", "alice's question"), ("bob", "bob's question")):
            await core.handler(user_message(text, user=user), RecordingResponder())
    code, out, err = await _chatbot(
        "privacy", "export", "--platform", "console", "--user", "alice",
        "--config", str(config), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    exported = json.loads(out)
    texts = [t["text"] for turns in exported["conversations"].values() for t in turns]
    assert texts == ["alice's question", "echo: alice's question"]
    assert exported["usage"]  # her token usage, by period

    code, _, err = await _chatbot(
        "privacy", "erase", "--platform", "console", "--user", "alice",
        "--config", str(config), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 2 and "--yes" in err  # nothing deleted without it
    code, out, err = await _chatbot(
        "privacy", "erase", "--platform", "console", "--user", "alice", "--yes",
        "--config", str(config), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert "2 turn(s) from shared ones" in out
    conversation = core.chat.conversation_key(user_message("x"))
    history = await redis.lrange(f"{key_prefix}:conv:{{{conversation.id}}}:history", 0, -1)
    assert [json.loads(raw)["c"] for raw in history] == ["bob's question", "echo: bob's question"]
