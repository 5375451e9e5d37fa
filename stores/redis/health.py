"""What the Redis store's parts share: its limits, and whether Redis answers right now."""

from __future__ import annotations

import logging

from redis.exceptions import RedisClusterException, RedisError

from stores.limits import StoreLimits

__all__ = ["FAILURES", "RedisHealth", "StoreLimits"]

FAILURES = (RedisError, OSError, RedisClusterException)
"""What a Redis call raises when Redis (or one Cluster node, or the Cluster's routing) is
away: each degrades the bot to answering without history, never to a failed answer."""

log = logging.getLogger("stores.redis.store")  # one logger for the store's outage lines


class RedisHealth:
    """Tracks whether Redis answers, so an outage is logged once and the recovery once."""

    def __init__(self, describe: str) -> None:
        self.up = True
        self._describe = describe

    @property
    def describe(self) -> str:
        """Where Redis is, as logged (a URL without its password, or the Sentinel service)."""
        return self._describe

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
