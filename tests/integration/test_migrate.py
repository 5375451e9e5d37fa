"""`chatbot migrate`: the usage counters release 0.1 left in Redis move to the 0.2 layout, once.

Redis is filled as 0.1 filled it: usage hashes `{prefix}:usage:<platform>:<user>:<period>`
(HINCRBY and EXPIRE), a rate-limit bucket `{prefix}:rate:<platform>:<user>`, the single
journal hash and a conversation's keys, which must not move.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bots.migrate import migrate
from stores.redis.keys import KeyBuilder
from tests.helpers import bot_process_env
from tests.redis_server import free_port

DAY, MONTH = "d2026-12-07", "m2026-12"
DAY_TTL, MONTH_TTL = 3 * 86400, 70 * 86400
# (platform, user, period, prompt, completion, TTL left in seconds)
LEGACY = [
    ("telegram", "42", DAY, 100, 20, DAY_TTL - 3600),
    ("telegram", "42", MONTH, 900, 150, MONTH_TTL - 86400),
    ("slack", "T1:U:7{x}", DAY, 30, 5, DAY_TTL - 60),  # a user id 0.1 escaped
    ("slack", "T1:U:7{x}", MONTH, 300, 50, MONTH_TTL - 60),
]
CONVERSATION = "{telegram:-:42:-:42}"


class Crash(Exception):
    """Where a killed `chatbot migrate` would have stopped."""


async def fill_as_release_0_1(redis: Redis, keys: KeyBuilder) -> None:
    for platform, user, period, prompt, completion, ttl in LEGACY:
        key = keys.legacy_user_usage(platform, user, period)
        await redis.hincrby(key, "prompt", prompt)
        await redis.hincrby(key, "completion", completion)
        await redis.hincrby(key, "total", prompt + completion)
        await redis.expire(key, ttl)
    prefix = keys.prefix
    await redis.hset(f"{prefix}:rate:telegram:42", mapping={"tokens": "4.5", "ts": "1"})
    await redis.expire(f"{prefix}:rate:telegram:42", 60)
    await redis.rpush(f"{prefix}:conv:{CONVERSATION}:history", '{"role":"user"}', '{"a":1}')
    await redis.hset(f"{prefix}:conv:{CONVERSATION}:meta", mapping={"persona": "pirate"})
    await redis.expire(f"{prefix}:conv:{CONVERSATION}:meta", 5000)
    await redis.hset(f"{prefix}:journal", "entry-1", '{"text":"hi"}')


async def snapshot(redis: Redis, prefix: str) -> dict[str, tuple[Any, int]]:
    """Every key under `prefix`: its value and its TTL (rounded to 10 s; -1: none)."""
    found: dict[str, tuple[Any, int]] = {}
    async for raw in redis.scan_iter(match=f"{prefix}:*", count=500):
        key = text(raw)
        kind = text(await redis.type(key))
        if kind == "hash":
            value: Any = {text(k): text(v) for k, v in (await redis.hgetall(key)).items()}
        elif kind == "list":
            value = [text(v) for v in await redis.lrange(key, 0, -1)]
        else:
            value = (kind, await redis.dump(key))
        ttl = await redis.ttl(key)
        found[key] = (value, -1 if ttl < 0 else round(ttl, -1))
    return found


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def counters(raw: dict[Any, Any]) -> dict[str, int]:
    """A usage hash's counters, without the migration's markers."""
    return {text(k): int(v) for k, v in raw.items() if not text(k).startswith("migrated:")}


def expected(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt": prompt, "completion": completion, "total": prompt + completion}


@pytest.fixture
def keys(key_prefix: str) -> KeyBuilder:
    return KeyBuilder(key_prefix)


def test_the_names_0_1_used(keys: KeyBuilder) -> None:
    """The fill above writes 0.1's names: `legacy_user_usage` is checked against them."""
    prefix = keys.prefix
    assert keys.legacy_user_usage("telegram", "42", DAY) == f"{prefix}:usage:telegram:42:{DAY}"
    assert keys.legacy_user_usage("slack", "T1:U:7{x}", MONTH) == (
        f"{prefix}:usage:slack:T1%3AU%3A7%7Bx%7D:{MONTH}"
    )
    assert keys.user_usage("telegram", "42", DAY) == f"{prefix}:usage:{{telegram:42}}:{DAY}"


async def test_dry_run_changes_nothing_and_counts(redis: Redis, keys: KeyBuilder) -> None:
    await fill_as_release_0_1(redis, keys)
    before = await snapshot(redis, keys.prefix)

    report = await migrate(redis, keys, apply=False)

    assert await snapshot(redis, keys.prefix) == before
    assert (report.moved, report.already_moved, report.buckets_dropped) == (4, 0, 1)
    assert report.skipped == 0
    text = str(report)
    assert "usage keys to move: 4" in text
    assert f"{keys.legacy_user_usage('telegram', '42', DAY)} -> " in text
    assert f"{keys.prefix}:rate:telegram:42 (rate-limit bucket, dropped)" in text


async def test_apply_moves_counters_and_ttls_and_leaves_the_rest(
    redis: Redis, keys: KeyBuilder
) -> None:
    await fill_as_release_0_1(redis, keys)
    before = await snapshot(redis, keys.prefix)

    report = await migrate(redis, keys, apply=True)

    assert (report.moved, report.already_moved, report.buckets_dropped) == (4, 0, 1)
    for platform, user, period, prompt, completion, ttl in LEGACY:
        assert not await redis.exists(keys.legacy_user_usage(platform, user, period))
        new = keys.user_usage(platform, user, period)
        assert counters(await redis.hgetall(new)) == expected(prompt, completion)
        assert ttl - 10 <= await redis.ttl(new) <= ttl
    assert not await redis.exists(f"{keys.prefix}:rate:telegram:42")
    after = await snapshot(redis, keys.prefix)
    untouched = [
        f"{keys.prefix}:conv:{CONVERSATION}:history",
        f"{keys.prefix}:conv:{CONVERSATION}:meta",
        f"{keys.prefix}:journal",
    ]
    assert {key: after[key] for key in untouched} == {key: before[key] for key in untouched}
    assert len(after) == len(untouched) + len(LEGACY)  # the moved hashes, nothing else
    assert "usage keys moved: 4" in str(report)


async def test_a_second_apply_changes_nothing(redis: Redis, keys: KeyBuilder) -> None:
    await fill_as_release_0_1(redis, keys)
    await migrate(redis, keys, apply=True)
    before = await snapshot(redis, keys.prefix)

    again = await migrate(redis, keys, apply=True)

    assert (again.moved, again.already_moved, again.buckets_dropped, again.skipped) == (0,) * 4
    assert await snapshot(redis, keys.prefix) == before
    assert "usage keys moved: 0" in str(again)


async def test_a_crash_between_add_and_delete_does_not_count_twice(
    redis: Redis, keys: KeyBuilder
) -> None:
    await fill_as_release_0_1(redis, keys)
    crashed_on = keys.legacy_user_usage("telegram", "42", MONTH)

    async def crash(old: str, new: str) -> None:
        if old == crashed_on:
            raise Crash(old)

    with pytest.raises(Crash):
        await migrate(redis, keys, apply=True, after_add=crash)
    assert await redis.exists(crashed_on)  # added to the new hash, not deleted
    new = keys.user_usage("telegram", "42", MONTH)
    assert counters(await redis.hgetall(new)) == expected(900, 150)

    dry = await migrate(redis, keys, apply=False)
    assert dry.already_moved == 1
    report = await migrate(redis, keys, apply=True)

    assert report.already_moved == 1
    assert not await redis.exists(crashed_on)
    for platform, user, period, prompt, completion, _ in LEGACY:
        new = keys.user_usage(platform, user, period)
        assert counters(await redis.hgetall(new)) == expected(prompt, completion)
    assert "(added by an earlier run; old key deleted)" in str(report)


async def test_counts_of_the_new_release_are_summed_and_the_longer_ttl_kept(
    redis: Redis, keys: KeyBuilder
) -> None:
    await fill_as_release_0_1(redis, keys)
    # 0.2 already runs and has counted for two users: one with a TTL longer than the old
    # hash's, one shorter
    day = keys.user_usage("telegram", "42", DAY)
    await redis.hset(day, mapping={"prompt": 7, "completion": 3, "total": 10})
    await redis.expire(day, DAY_TTL)  # longer than the old hash's
    month = keys.user_usage("slack", "T1:U:7{x}", MONTH)
    await redis.hset(month, mapping={"prompt": 1, "completion": 1, "total": 2})
    await redis.expire(month, 100)  # shorter

    report = await migrate(redis, keys, apply=True)

    assert report.moved == 4
    assert counters(await redis.hgetall(day)) == expected(107, 23)
    assert DAY_TTL - 10 <= await redis.ttl(day) <= DAY_TTL
    assert counters(await redis.hgetall(month)) == expected(301, 51)
    assert MONTH_TTL - 70 <= await redis.ttl(month) <= MONTH_TTL - 60


async def test_writes_of_0_1_during_and_after_the_move_are_moved_too(
    redis: Redis, keys: KeyBuilder
) -> None:
    """0.1 still running: a write between the read and the delete is not lost, and an old
    hash 0.1 makes again after the move is added whole on the next run."""
    await fill_as_release_0_1(redis, keys)
    old = keys.legacy_user_usage("telegram", "42", DAY)
    new = keys.user_usage("telegram", "42", DAY)
    written: list[str] = []

    async def release_0_1_writes(moved: str, _: str) -> None:
        if moved == old and not written:
            written.append(moved)
            await redis.hincrby(old, "prompt", 5)
            await redis.hincrby(old, "total", 5)

    report = await migrate(redis, keys, apply=True, after_add=release_0_1_writes)
    assert written and report.moved == 4
    assert not await redis.exists(old)
    assert counters(await redis.hgetall(new)) == expected(105, 20)

    await redis.hincrby(old, "prompt", 2)  # 0.1 answered once more that day
    await redis.hincrby(old, "completion", 1)
    await redis.hincrby(old, "total", 3)
    await redis.expire(old, DAY_TTL)
    report = await migrate(redis, keys, apply=True)
    assert (report.moved, report.already_moved) == (1, 0)
    assert counters(await redis.hgetall(new)) == expected(107, 21)

    # and again: a new old hash with more in every counter than the one moved last
    await redis.hset(old, mapping={"prompt": 100, "completion": 5, "total": 105})
    await migrate(redis, keys, apply=True)
    assert counters(await redis.hgetall(new)) == expected(207, 26)


async def test_keys_not_written_by_0_1_are_left_alone(redis: Redis, keys: KeyBuilder) -> None:
    prefix = keys.prefix
    odd = {
        f"{prefix}:usage:telegram:42:yesterday": ("total", "5"),  # not a period
        f"{prefix}:usage:telegram:42:{DAY}": ("total", "many"),  # not a counter
    }
    for key, (name, value) in odd.items():
        await redis.hset(key, name, value)
    await redis.set(f"{prefix}:usage:telegram:43:{DAY}", "5")  # not a hash
    before = await snapshot(redis, prefix)

    report = await migrate(redis, keys, apply=True)

    assert (report.moved, report.skipped) == (0, 3)
    assert await snapshot(redis, prefix) == before
    assert "left alone" in str(report)


async def _chatbot(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, key_prefix: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nredis:\n  key_prefix: {key_prefix}\n")
    return path


async def test_cli_dry_run_then_apply(
    redis: Redis, keys: KeyBuilder, redis_url: str, tmp_path: Path
) -> None:
    await fill_as_release_0_1(redis, keys)
    before = await snapshot(redis, keys.prefix)
    config = str(_config(tmp_path, keys.prefix))
    env = bot_process_env(REDIS_URL=redis_url)

    code, out, err = await _chatbot("migrate", "--config", config, env=env, cwd=tmp_path)
    assert code == 0, err
    assert (
        "dry run: nothing changed; run with --apply to move 4 keys and drop 1 rate-limit bucket"
    ) in out
    assert await snapshot(redis, keys.prefix) == before

    code, out, err = await _chatbot("migrate", "--apply", "--config", config, env=env, cwd=tmp_path)
    assert code == 0, err
    assert "usage keys moved: 4" in out
    assert f"{keys.legacy_user_usage('telegram', '42', DAY)} -> " in out
    assert "done: moved 4 keys, dropped 1 rate-limit bucket" in out
    day = keys.user_usage("telegram", "42", DAY)
    assert counters(await redis.hgetall(day)) == expected(100, 20)

    code, out, err = await _chatbot("migrate", "--config", config, env=env, cwd=tmp_path)
    assert code == 0, err
    assert "dry run: nothing changed; nothing to migrate" in out


async def test_cli_unreachable_redis_exits_1_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = bot_process_env(
        REDIS_URL=f"redis://:hunter2pw@127.0.0.1:{port}/0", CHATBOT_REDIS__MODE="standalone"
    )
    code, _, err = await _chatbot(
        "migrate", "--apply", "--config", str(_config(tmp_path, "x")), env=env, cwd=tmp_path
    )
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (ConnectionError); "
        "check REDIS_URL, or unset it to use the embedded Redis"
    ]
