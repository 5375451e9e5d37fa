"""The whole core wired as `chatbot` wires it, on the test Redis and the fake OpenAI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from bots.assembly import Core, build_core
from core.config import Secrets, Settings


@pytest.fixture
async def core(settings: Settings, secrets: Secrets, redis: Redis) -> AsyncIterator[Core]:
    async with AsyncExitStack() as stack:
        yield await build_core(stack, settings, secrets, redis=redis)
