"""`chatbot privacy report|export|erase`: what the bot keeps about people and for how long
(for a privacy notice), and a person's data taken out or deleted (for an access or erasure
request), through the store's port (docs/privacy.md)."""

from __future__ import annotations

import json
import math
from contextlib import AsyncExitStack

from bots.assembly import open_store
from core.config import Secrets, Settings
from core.routing.mydata import export_document
from core.storage import Erased, Person


def _days(seconds: float) -> str:
    if seconds >= 86400:
        days = seconds / 86400
        return f"{days:g} day{'s' if days != 1 else ''}"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def report(settings: Settings) -> str:
    """The data the bot keeps, in three retention tiers, with this configuration's TTLs."""
    privacy, redis, context = settings.privacy, settings.redis, settings.context
    profile = privacy.profile_ttl_days * 86400
    limits = settings.limits
    bucket = "-"
    if limits.messages_per_minute > 0:
        capacity = limits.burst or max(1, math.ceil(limits.messages_per_minute))
        bucket = _days(capacity / limits.messages_per_minute * 60 + 1)
    masked = ", ".join(privacy.mask + sorted(privacy.patterns)) or "off"
    rows = [
        ("per request", "delivery ids seen (the dedupe), web answers kept for retries",
         _days(redis.dedupe_ttl)),
        ("per request", "messages being answered (the journal)",
         "until answered; a crashed process's until another answers them"),
        ("per request", "a conversation's pending messages and its lock",
         f"{_days(redis.lock_wait)} / {_days(redis.lock_ttl)}"),
        ("per request", "a user's rate-limit bucket", bucket),
        ("conversation", "turns (what users wrote, masked; the answers), summary, persona and "
         "model chosen, masked values and their placeholders, token usage",
         f"{_days(context.ttl_seconds)} after the last turn (context.ttl_days)"),
        ("conversation", "images people sent (scaled down), shown again in follow-up questions",
         f"{_days(settings.media.image_ttl_hours * 3600)} (media.image_ttl_hours)"),
        ("conversation", "cached first answers (no user id; text digests as keys)",
         _days(settings.cache.ttl_seconds) if settings.cache.enabled else "off"),
        ("profile", "a user's token usage per day", "3 days"),
        ("profile", "a user's token usage per month, a channel's defaults",
         f"{_days(profile)} after the last change (privacy.profile_ttl_days)"),
    ]  # fmt: skip
    width = max(len(kind) for kind, _, _ in rows)
    lines = ["What the bot keeps (Redis, or this process with --memory), and for how long:", ""]
    lines += [f"  {kind:<{width}}  {what}: {kept}" for kind, what, kept in rows]
    lines += [
        "",
        f"Masked before the model, the history, the cache and the logs: {masked}.",
        "Logs: "
        + ("users' text at INFO (input.log_user_text)" if settings.input.log_user_text
           else "no user or model text (input.log_user_text off)")
        + ".",
    ]  # fmt: skip
    return "\n".join(lines)


async def export(settings: Settings, secrets: Secrets, person: Person) -> str:
    """`chatbot privacy export`: a person's data as JSON, for an access request."""
    async with AsyncExitStack() as stack:
        store = await open_store(stack, settings, secrets)
        document = await export_document(store, person)
    document["kept"] = "see `chatbot privacy report` for how long each kind is kept"
    return json.dumps(document, ensure_ascii=False, indent=2)


async def erase(settings: Settings, secrets: Secrets, person: Person) -> Erased:
    """`chatbot privacy erase`: delete a person's data, for an erasure request."""
    async with AsyncExitStack() as stack:
        store = await open_store(stack, settings, secrets)
        return await store.erase(person)
