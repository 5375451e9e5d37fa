"""`redis.sentinels` and `redis.service_name`: parsed, refused with the key and the file when
malformed, and opened the way `chatbot run` opens them."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bots.redis_conn import RedisStartError, open_redis
from core.config import ConfigError, Secrets, load_settings
from tests.redis_server import free_port


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_sentinels_are_host_port_pairs(tmp_path: Path):
    path = _config(tmp_path, "redis:\n  sentinels: ['10.0.0.5:26379', '[::1]:26380']\n")
    settings = load_settings(path, environ={})
    assert settings.redis.sentinel_addresses() == [("10.0.0.5", 26379), ("::1", 26380)]
    assert settings.redis.service_name == "mymaster"
    assert load_settings(None, environ={}).redis.sentinels == []


@pytest.mark.parametrize("entry", ["10.0.0.5", "10.0.0.5:", ":26379", "host:port", "h:70000"])
def test_a_bad_sentinel_names_the_key_and_the_file(tmp_path: Path, entry: str):
    path = _config(tmp_path, f"redis:\n  sentinels: ['10.0.0.5:26379', '{entry}']\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value).startswith(f"{path}: redis.sentinels: ")
    assert f"{entry!r} is not host:port" in str(caught.value)


async def test_sentinels_and_redis_url_together_are_refused(tmp_path: Path):
    settings = load_settings(_config(tmp_path, "redis:\n  sentinels: ['127.0.0.1:1']\n"), {})
    secrets = Secrets(redis_url="redis://127.0.0.1:6379/0")
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="REDIS_URL"):
            await open_redis(stack, settings, secrets)


async def test_unreachable_sentinels_fail_the_start_clearly(tmp_path: Path):
    where = f"127.0.0.1:{free_port()}"
    settings = load_settings(_config(tmp_path, f"redis:\n  sentinels: ['{where}']\n"), {})
    async with AsyncExitStack() as stack:
        with pytest.raises(RedisStartError) as caught:
            await open_redis(stack, settings, Secrets(redis_sentinel_password="pw-not-shown"))
    message = str(caught.value)
    assert f"sentinel 'mymaster' at {where}" in message and "redis.sentinels" in message
    assert "pw-not-shown" not in message
