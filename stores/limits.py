"""What every store keeps and for how long: one set of limits for the memory and Redis
stores alike (config: `context.max_turns`, `context.ttl_days`, `redis.lock_*`,
`redis.dedupe_ttl`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long and how much the store keeps."""

    max_turns: int = 40
    ttl_seconds: int = 7 * 86400
    lock_ttl: float = 60.0
    lock_wait: float = 120.0
    dedupe_ttl: int = 86400
    # How long a conversation's pending set outlives its last claim (None: `lock_wait`). A
    # worker's is `dedupe_ttl`: a place is its proof that a turn was begun and not recorded,
    # and must last as long as the delivery's seen key (`Deliveries.retake`).
    pending_ttl: float | None = None
    profile_ttl: int = 70 * 86400  # a channel's defaults (`privacy.profile_ttl_days`)
