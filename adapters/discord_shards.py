"""Discord gateway sharding: which client to build, and whether all of its shards are up.

Discord sends a guild's events to shard `(guild_id >> 22) % shard_count` and DMs to shard 0
(https://discord.com/developers/docs/events/gateway#sharding). With `shard_count` set, the
adapter runs discord.py's `AutoShardedClient` over the shards in `shard_ids` (all of them when
unset), so N processes, each with its own `shard_ids`, split the guilds between them; without
it, today's single-connection `discord.Client`, unchanged.

discord.py identifies one shard after another, 5 s apart (`Client.before_identify_hook`): the
one identify per 5 s that a bot's `max_concurrency` of 1 allows. A process of K shards takes
about 5·(K-1) s to become ready, and so does each of N processes started together.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from core.config import DiscordSettings

log = logging.getLogger(__name__)


def make_client(
    platform: DiscordSettings, intents: discord.Intents, **options: Any
) -> discord.Client:
    """A sharded client when `platform.shard_count` is set, else a plain one."""
    if platform.shard_count is None:
        return discord.Client(intents=intents, **options)
    return discord.AutoShardedClient(
        intents=intents, shard_count=platform.shard_count, shard_ids=own_shards(platform), **options
    )


def own_shards(platform: DiscordSettings) -> list[int]:
    """The shard ids this process runs ([] unsharded)."""
    if platform.shard_count is None:
        return []
    if platform.shard_ids is None:
        return list(range(platform.shard_count))
    return list(platform.shard_ids)


def shards_up(client: discord.Client, platform: DiscordSettings) -> bool:
    """Every shard of this process has an open connection (True unsharded). A shard that
    lost its connection keeps its closed socket until discord.py reconnects it, so a shard
    down shows here, while `is_ready()` stays true after the first READY of all of them."""
    if not isinstance(client, discord.AutoShardedClient):
        return True
    shards = client.shards
    return all(i in shards and not shards[i].is_closed() for i in own_shards(platform))


async def check_shard_count(client: discord.Client, platform: DiscordSettings) -> None:
    """Warns when Discord recommends more shards than configured (GET /gateway/bot): Discord
    refuses a connection of a bot that needs more (close code 4011, "Sharding required")."""
    if platform.shard_count is None:
        return
    try:
        recommended, _, _ = await client.http.get_bot_gateway()
    except (discord.HTTPException, discord.GatewayNotFound, OSError) as exc:
        log.info("discord: could not read the recommended shard count (%s)", type(exc).__name__)
        return
    if recommended > platform.shard_count:
        log.warning("discord: Discord recommends %d shards; platforms.discord.shard_count is %d",
                    recommended, platform.shard_count)  # fmt: skip


def describe(platform: DiscordSettings) -> str:
    """For the log line at start: "" unsharded, else " (shards 0, 1 of 4)"."""
    if platform.shard_count is None:
        return ""
    ids = ", ".join(map(str, own_shards(platform)))
    return f" (shards {ids} of {platform.shard_count})"
