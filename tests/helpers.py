"""Small test helpers: waiting with a deadline, and an in-memory Responder that records calls."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from core.model import (
    ApprovalRequest,
    Attachment,
    ContextKey,
    MediaKind,
    Message,
    MessageRef,
    OutgoingFile,
    User,
    parse_command,
)
from core.protocols import FetchError


def bot_process_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m bots` child: this one without any bot setting or
    secret of the developer's, plus `extra`, with the project importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "REDIS_", "SLACK_", "TELEGRAM_", "DISCORD_",
                                "CHATBOT_"))}  # fmt: skip
    env.update(extra, PYTHONPATH=str(Path(__file__).parents[1]))
    cluster = os.environ.get("CHATBOT_TEST_REDIS_MODE") == "cluster"
    if cluster and "REDIS_URL" in extra and "CHATBOT_REDIS__MODE" not in extra:
        env["CHATBOT_REDIS__MODE"] = "cluster"  # the suite's Redis is a Cluster node
    return env


async def answers_200(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (False while nothing listens there)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, every: float = 0.01
) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


@dataclass
class Call:
    kind: str  # "send" | "edit" | "typing" | "delete"
    text: str = ""
    ref: str = ""
    final: bool = False


@dataclass
class RecordingResponder:
    """A `Responder` in memory: records every call and keeps each message's current text."""

    limit: int = 4000
    edit_interval: float = 0.0
    typing_interval: float = 0.0
    fail_edits: int = 0  # the next N edits raise
    fail_sends: int = 0  # the next N sends raise
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def measure(self, text: str) -> int:
        return len(text)

    async def send(self, text: str, *, final: bool) -> MessageRef:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("send failed")
        ref = str(next(self._ids))
        self.calls.append(Call("send", text, ref, final))
        self.messages[ref] = text
        return MessageRef(ref)

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        if self.fail_edits:
            self.fail_edits -= 1
            raise ConnectionError("edit failed")
        self.calls.append(Call("edit", text, ref.id, final))
        self.messages[ref.id] = text

    async def typing(self) -> None:
        self.calls.append(Call("typing"))

    async def delete(self, ref: MessageRef) -> None:
        self.calls.append(Call("delete", ref=ref.id))
        self.messages.pop(ref.id, None)

    @property
    def texts(self) -> list[str]:
        """The current text of every message sent, in order."""
        return list(self.messages.values())

    @property
    def shown(self) -> str:
        return "".join(self.texts)


@dataclass
class FileResponder(RecordingResponder):
    """A `MediaResponder` in memory: `fetch` serves `files` by handle, `send_file` records."""

    files: dict[str, bytes] = field(default_factory=dict)
    sent_files: list[OutgoingFile] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        self.fetched.append(attachment.handle)
        if attachment.handle not in self.files:
            raise FetchError("the platform answered 404")
        data = self.files[attachment.handle]
        if len(data) > max_bytes:
            raise FetchError("the file is too large")
        return data

    async def send_file(self, file: OutgoingFile) -> MessageRef:
        self.sent_files.append(file)
        ref = str(next(self._ids))
        self.calls.append(Call("file", file.name, ref, True))
        return MessageRef(ref)


@dataclass
class ApprovingResponder(FileResponder):
    """An `Approver` in memory: records the approval requests it was asked to show."""

    requests: list[ApprovalRequest] = field(default_factory=list)

    async def ask_approval(self, request: ApprovalRequest) -> MessageRef:
        self.requests.append(request)
        ref = str(next(self._ids))
        self.calls.append(Call("approval", request.text, ref, True))
        self.messages[ref] = request.text
        return MessageRef(ref)


@dataclass
class PressReply:
    """A `DecisionReply` in memory: what the presser was told, what the request became."""

    notices: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def settle(self, text: str) -> None:
        self.settled.append(text)


def attach(
    responder: FileResponder, name: str, data: bytes, kind: MediaKind, mime_type: str = ""
) -> Attachment:
    """An attachment the responder serves (the handle is the name)."""
    responder.files[name] = data
    return Attachment(name, mime_type, name, len(data), kind)


def user_message(
    text: str,
    *,
    channel: str = "c1",
    user: str = "u1",
    platform: str = "console",
    thread: str = "",
    message_id: str = "m1",
    private: bool = False,
    attachments: tuple[Attachment, ...] = (),
) -> Message:
    """A message as an adapter would build it."""
    return Message(
        platform=platform,
        key=ContextKey(platform, channel=channel, user=user, thread=thread),
        user=User(user, f"user {user}"),
        text=text,
        message_id=message_id,
        command=parse_command(text),
        private=private,
        attachments=attachments,
    )


async def journal_owners_gone(redis: Any, prefix: str) -> bool:
    """Whether every owner of an entry in the answer journal has lost its heartbeat key.

    Looks the owners up by name: a SCAN for `owner:*` would walk the whole shared Redis."""
    entries = await journal_entries(redis, prefix)
    owners = {json.loads(entry)["owner"] for entry in entries}
    return not owners or not await redis.exists(*(f"{prefix}:owner:{o}" for o in owners))


async def journal_entries(redis: Any, prefix: str) -> list[bytes]:
    """Every entry of the answer journal: one hash per process that registered as an owner
    (`stores/redis/journal.py`)."""
    entries: list[bytes] = []
    for owner in await redis.smembers(f"{prefix}:journal:owners"):
        entries += await redis.hvals(f"{prefix}:journal:{{{owner.decode()}}}")
    return entries
