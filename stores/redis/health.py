"""What the Redis store's parts share: its limits, and whether Redis answers right now."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("stores.redis.store")  # one logger for the store's outage lines


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long and how much the store keeps."""

    max_turns: int = 40
    ttl_seconds: int = 7 * 86400
    lock_ttl: float = 60.0
    lock_wait: float = 120.0
    dedupe_ttl: int = 86400


class RedisHealth:
    """Tracks whether Redis answers, so an outage is logged once and the recovery once."""

    def __init__(self, describe: str) -> None:
        self.up = True
        self._describe = describe

    def failed(self, exc: BaseException, doing: str) -> None:
        if self.up:
            log.warning(
                "Redis at %s unavailable while %s (%s); answering without history until it is back",
                self._describe,
                doing,
                type(exc).__name__,
            )
        self.up = False

    def ok(self) -> None:
        if not self.up:
            log.warning("Redis at %s is back; history is used again", self._describe)
        self.up = True
