"""The bot on Redis Sentinel (1 master, 1 replica, 3 sentinels), opened as `chatbot run` opens
it (`redis.sentinels`, no `REDIS_URL`): a conversation is remembered, and a failover in the
middle of one loses no turn whose save was acknowledged, while the bot keeps answering.

"Acknowledged" is what the bot itself can observe: after each turn the test reads the history
back through the bot's store (so through whichever master Sentinel names then); every user
text seen there once must still be there at the end, read through the new master.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import AsyncExitStack
from pathlib import Path

from bots.app import Core, build_core
from core.config import Secrets
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message, wait_for
from tests.redis_sentinel import SERVICE, SentinelGroup, running_group

TALK_DEADLINE = 20.0  # seconds of talking through a failover before the test gives up


class Conversation:
    """One user talking to the core, keeping the texts whose turns were acknowledged."""

    def __init__(self, core: Core, fake: FakeOpenAI) -> None:
        self.core = core
        self.fake = fake
        self.numbers = itertools.count(1)
        self.said: list[str] = []
        self.acknowledged: list[str] = []
        self.with_history: list[str] = []  # texts answered with earlier turns in the prompt
        self.without_history: list[str] = []  # texts answered while Redis could not be read

    async def history(self) -> list[str]:
        loaded = await self.core.store.load(self.core.chat.conversation_key(user_message("x")))
        return [turn.content for turn in loaded.history if turn.role == "user"]

    async def say(self, text: str | None = None) -> str:
        """One turn; returns its text after checking the answer and reading the history."""
        number = next(self.numbers)
        text = text or f"t{number}"
        responder = RecordingResponder()
        self.said.append(text)
        await self.core.handler(user_message(text, message_id=f"m{number}"), responder)
        assert responder.shown == f"echo: {text}", responder.calls
        await self.read_back()
        prompt = self.fake.chat_requests()[-1].messages
        if text != "t1":
            remembered = sum(m["role"] == "user" for m in prompt) > 1
            (self.with_history if remembered else self.without_history).append(text)
        return text

    async def read_back(self) -> None:
        for text in await self.history():
            if text not in self.acknowledged:
                self.acknowledged.append(text)

    async def until_remembered(self, failover: asyncio.Future[int], after: int = 2) -> None:
        """Talk through the failover until it is over and `after` turns in a row are
        answered with the conversation's history and acknowledged again."""
        deadline = time.monotonic() + TALK_DEADLINE
        streak = 0
        while streak < after:
            assert time.monotonic() < deadline, (self.acknowledged, self.without_history)
            text = await self.say()
            kept = text in self.with_history and text in self.acknowledged
            streak = streak + 1 if kept and failover.done() else 0
            await asyncio.sleep(0.2)


async def _core(stack: AsyncExitStack, group: SentinelGroup, tmp_path: Path,
                fake: FakeOpenAI) -> Core:  # fmt: skip
    settings = make_settings("sentinel", tmp_path,
                             redis={"sentinels": group.addresses, "service_name": SERVICE,
                                    "lock_ttl": 2})  # fmt: skip
    # no REDIS_URL: `chatbot run` opens the master through the sentinels
    return await build_core(stack, settings, Secrets(openai_base_url=fake.base_url))


async def test_a_conversation_through_sentinel(tmp_path: Path, fake_openai: FakeOpenAI):
    async with running_group(tmp_path) as group, AsyncExitStack() as stack:
        core = await _core(stack, group, tmp_path, fake_openai)
        assert core.store.where.startswith(f"sentinel {SERVICE!r} at 127.0.0.1:")
        talk = Conversation(core, fake_openai)
        for _ in range(3):
            await talk.say()
        assert await talk.history() == ["t1", "t2", "t3"]
        assert talk.with_history == ["t2", "t3"]
        # the turns are on the master Sentinel names, and replicated
        for node in group.data_nodes:
            with node.client() as client:
                await wait_for(lambda c=client: c.dbsize() > 0, timeout=5)


async def test_the_master_killed_mid_answer(tmp_path: Path, fake_openai: FakeOpenAI):
    """A crash: Sentinel promotes the replica after `down-after-milliseconds`; the answer
    streaming at the kill still reaches the user, messages meanwhile are answered without
    history, and every acknowledged turn is on the new master."""
    async with running_group(tmp_path) as group, AsyncExitStack() as stack:
        core = await _core(stack, group, tmp_path, fake_openai)
        talk = Conversation(core, fake_openai)
        for _ in range(3):
            await talk.say()
        assert talk.acknowledged == ["t1", "t2", "t3"]

        old = group.master_port()
        fake_openai.push(Reply(words_per_chunk=1, ttft=0.1, tokens_per_second=10))
        streaming = asyncio.create_task(talk.say("a long answer while the master dies"))
        requests = len(fake_openai.chat_requests())
        await wait_for(lambda: len(fake_openai.chat_requests()) > requests, timeout=5)
        group.node_at(old).kill()
        new_master = asyncio.ensure_future(asyncio.to_thread(group.wait_new_master, old))
        await streaming
        await talk.until_remembered(new_master)

        assert await new_master != old
        assert talk.without_history  # the switch took a while: those turns were answered
        final = await talk.history()
        assert final[:3] == ["t1", "t2", "t3"]
        assert [t for t in talk.acknowledged if t not in final] == []


async def test_a_forced_failover_with_min_replicas(tmp_path: Path, fake_openai: FakeOpenAI):
    """`SENTINEL FAILOVER` with the data nodes set as docs/operating.md#redis-sentinel says
    (`min-replicas-to-write 1`): the old master refuses writes once its replica is promoted,
    so nothing acknowledged there is dropped when Sentinel later demotes it."""
    data_args = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
    async with running_group(tmp_path, data_args=data_args) as group, AsyncExitStack() as stack:
        core = await _core(stack, group, tmp_path, fake_openai)
        talk = Conversation(core, fake_openai)
        for _ in range(3):
            await talk.say()

        old = group.master_port()
        failover = asyncio.ensure_future(asyncio.to_thread(group.failover))
        await talk.until_remembered(failover)
        assert await failover != old
        # Sentinel demotes the old master (8 s after the switch, a fixed period of Sentinel's):
        # it then copies the new master, and any write that only it took is gone
        await asyncio.to_thread(group.wait_replicated)
        await talk.say()
        # the saves were refused (not acknowledged) until the old master was a replica
        assert [t for t in talk.said if t not in talk.acknowledged]

        final = await talk.history()
        assert final[:3] == ["t1", "t2", "t3"]
        assert [t for t in talk.acknowledged if t not in final] == []
        assert len(talk.acknowledged) > 5  # turns after the failover were kept too
