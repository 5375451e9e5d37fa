"""The one HTTP server: /healthz, /readyz and /metrics of a running BotApp."""

from __future__ import annotations

import aiohttp
from redis.asyncio import Redis

from bots.app import BotApp
from core.config import Secrets, Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import RecordingResponder, user_message


async def test_health_ready_and_metrics(
    settings: Settings, secrets: Secrets, redis: Redis, fake_openai: FakeOpenAI
):
    app = BotApp(settings, secrets, redis=redis)
    await app.start()
    try:
        assert app.core is not None
        await app.core.handler(user_message("hello", platform="console"), RecordingResponder())
        fake_openai.push(*[Reply("error", status=500, retry_after=0.01)] * 3)
        await app.core.handler(user_message("fails", platform="console"), RecordingResponder())
        base = f"http://127.0.0.1:{app.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
                health = await response.json()
            async with session.get(base + "/readyz") as response:
                assert response.status == 200  # no platform configured: Redis is enough
            async with session.get(base + "/metrics") as response:
                assert response.status == 200
                metrics = await response.text()
    finally:
        await app.stop()
    assert health == {"status": "ok", "redis": "up", "platforms": {}, "in_flight": 0}
    assert 'chatbot_messages_in_total{platform="console"} 2.0' in metrics
    assert 'chatbot_answers_out_total{platform="console"} 2.0' in metrics  # answer + apology
    assert 'chatbot_errors_total{kind="llm_error"} 1.0' in metrics
    assert 'chatbot_llm_tokens_total{kind="completion"}' in metrics
    assert "chatbot_llm_time_to_first_token_seconds_count" in metrics
    assert "chatbot_redis_seconds_count" in metrics
