"""One message's read → decide → write against the store, shared by the chat turn and the
intent turn.

The policies that may refuse (rate limit, daily budget) decide from the turn's one read;
whatever the turn produced leaves in its one write, together with the usage it cost, the
journal entry and the message's delivery claim. A refused message writes nothing but the
journal entry's removal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from core.conversation.intake import current_claim
from core.model import ContextKey, Message, Turn, kept
from core.policies.limits import RateLimiter, TokenBudget
from core.policies.masking import Masked, Masker
from core.policies.usage import UsageBook
from core.protocols import Usage
from core.storage import (
    CacheEntry,
    ImageBlob,
    Person,
    Place,
    Store,
    TurnLock,
    TurnReads,
    TurnState,
    TurnWrites,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policies:
    """The policies a turn reads for and writes for; each None (or False) when off."""

    limiter: RateLimiter | None = None
    budget: TokenBudget | None = None
    usage: UsageBook | None = None
    journal: bool = False  # record the message as being answered until its turn is saved
    claims: bool = False  # the message's delivery claim leaves in the turn's write
    masker: Masker | None = None  # `privacy.mask`: sensitive values become placeholders
    image_ttl: int = 86400  # seconds a user turn's image is kept (`media.image_ttl_hours`)


@dataclass(frozen=True, slots=True)
class Opened:
    """A turn's read and what the policies decided from it."""

    state: TurnState
    refusal: str | None
    now: datetime | None  # the usage clock's reading, for the budget and the record


class Exchange:
    """The read and the write of a turn, with the policies' decisions between them."""

    def __init__(self, store: Store, policies: Policies) -> None:
        self.store = store
        self.policies = policies

    async def open(
        self,
        message: Message,
        key: ContextKey,
        *,
        lock: TurnLock,
        history: bool = True,
        cache: str | None = None,
        journal: bool = True,
    ) -> Opened:
        """One read: the conversation (unless not `history`), the rate-limit take, today's
        usage, a cached answer under `cache`; and the policies' refusal, if any."""
        p = self.policies
        now = p.usage.now() if p.usage is not None else None
        limiter = p.limiter if p.limiter is not None and p.limiter.enabled else None
        budget = p.budget if p.budget is not None and p.budget.enabled else None
        reads = TurnReads(
            key,
            history=history,
            channel=message.key if history else None,
            journal=kept(message) if journal and p.journal else None,
            rate=limiter.take(message) if limiter is not None else None,
            budget=budget.today(message, now) if budget is not None and now else None,
            cache=cache or None,
            masks=self.masking,
        )
        state = await self.store.read_turn(reads, lock=lock)
        refusal = limiter.refusal(state.rate) if limiter is not None else None
        if refusal is None and budget is not None and now is not None:
            refusal = budget.refusal(state.used_today, now)
        return Opened(state, refusal, now)

    @property
    def masking(self) -> bool:
        return self.policies.masker is not None and self.policies.masker.enabled

    def mask(
        self, text: str, opened: Opened | None = None, also: Mapping[str, str] | None = None
    ) -> Masked:
        """`text` with its sensitive values as this conversation's placeholders (`<EMAIL_1>`
        stays the same address across turns); unchanged when masking is off. Before the read
        (`opened` None) the numbering starts afresh: for moderation, logs, a cache probe."""
        masker = self.policies.masker
        if masker is None or not masker.enabled:
            return Masked(text, {})
        known = opened.state.masks if opened is not None else {}
        return masker.mask(text, {**known, **also} if also else known)

    async def close(
        self,
        message: Message,
        key: ContextKey,
        turns: Sequence[Turn],
        *,
        lock: TurnLock,
        opened: Opened,
        usage: Usage | None = None,
        cache: CacheEntry | None = None,
        masks: Mapping[str, str] | None = None,
        drawn: int = 0,
    ) -> bool:
        """One write: the turns (their images as blobs), the usage (`drawn` pictures), the
        cache entry, the journal entry's and the delivery claim's release, and the lock's.
        Whether it landed."""
        p = self.policies
        record = None
        if p.usage is not None and (usage is not None or drawn) and opened.now is not None:
            record = p.usage.record(message, usage or Usage(), opened.now, images=drawn)
        images = tuple(
            ImageBlob(image.id, image.data, p.image_ttl)
            for turn in turns
            for image in turn.images
            if image.data
        )
        claim = current_claim.get() if p.claims else None
        writes = TurnWrites(
            key,
            tuple(turns),
            answered=message if p.journal else None,
            usage=record,
            cache=cache,
            leave=Place(claim.line, claim.place) if claim is not None else None,
            masks=tuple(masks.items()) if masks else (),
            person=Person(message.platform, message.user.id) if message.user.id else None,
            # theirs alone: a private conversation, or a scope that keeps the user in the key
            own=message.private or (bool(key.user) and key.user == message.user.id),
            images=images,
        )
        saved = await self.store.write_turn(writes, lock=lock)
        if claim is not None:
            claim.released = saved  # else the intake releases it on its own
        return saved

    async def forget(self, message: Message, key: ContextKey) -> None:
        """Drop the journal entry on a path that writes nothing else (a refusal, a bug)."""
        if not self.policies.journal:
            return
        try:
            await self.store.forget(key, message)
        except Exception as exc:
            log.warning("journal entry not removed: %s", type(exc).__name__)
