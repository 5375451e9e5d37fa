"""Build whole cores with per-test settings, as `chatbot` builds them, on one exit stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bots.assembly import Core, build_core
from core.config import Secrets, Settings
from tests.conftest import make_settings


class CoreFactory:
    """`await factory(limits={...})`: a Core with those settings over the test's Redis."""

    def __init__(
        self, stack: AsyncExitStack, key_prefix: str, tmp_path: Path, secrets: Secrets, redis: Redis
    ) -> None:
        self.stack = stack
        self.key_prefix = key_prefix
        self.tmp_path = tmp_path
        self.secrets = secrets
        self.redis = redis
        self.round_trips = 0

    def settings(self, **overrides: Any) -> Settings:
        return make_settings(self.key_prefix, self.tmp_path, **overrides)

    async def __call__(self, **overrides: Any) -> Core:
        return await build_core(
            self.stack,
            self.settings(**overrides),
            self.secrets,
            redis=self.redis,
            on_round_trip=self._count,
        )

    def _count(self) -> None:
        self.round_trips += 1

    @classmethod
    @asynccontextmanager
    async def open(
        cls, key_prefix: str, tmp_path: Path, secrets: Secrets, redis: Redis
    ) -> AsyncIterator[CoreFactory]:
        async with AsyncExitStack() as stack:
            yield cls(stack, key_prefix, tmp_path, secrets, redis)
