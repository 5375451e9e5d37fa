"""The baseline: how typical tutorial bots are written, on the same fakes.

One synchronous OpenAI call per message (blocking the event loop, as a sync client inside an
async handler does), the whole answer before posting anything, and the history in a
process-memory list of the last 10 messages. It serves Telegram webhook updates and posts
with `sendMessage`, so it is measured exactly like the real bot's Telegram path.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import aiohttp
import openai
from aiohttp import web

from bench.harness import Result, ThreadedOpenAI, _rusage
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram import FakeTelegram, text_message

TOKEN = "123456:TEST-token"


class NaiveBot:
    def __init__(self, api_url: str, openai_url: str) -> None:
        self.api_url = api_url
        self.client = openai.OpenAI(api_key="x", base_url=openai_url)
        self.history: dict[int, list[dict[str, str]]] = defaultdict(list)
        self.session: aiohttp.ClientSession | None = None

    async def webhook(self, request: web.Request) -> web.Response:
        update = await request.json()
        message = update["message"]
        chat = message["chat"]["id"]
        history = self.history[chat]
        history.append({"role": "user", "content": message["text"]})
        answer = self.client.chat.completions.create(  # blocks the event loop
            model="gpt-test", messages=[{"role": "system", "content": "bot"}, *history[-10:]]
        )
        text = answer.choices[0].message.content or ""
        history.append({"role": "assistant", "content": text})
        assert self.session is not None
        url = f"{self.api_url}/bot{TOKEN}/sendMessage"
        async with self.session.post(url, json={"chat_id": chat, "text": text}) as response:
            await response.read()
        return web.Response(text="ok")


async def run_naive(name: str, *, conversations: int, turns: int, reply: Reply) -> Result:
    """The same message pattern as the bot scenarios, against the naive bot."""
    result = Result(name)
    with ThreadedOpenAI(reply) as fake:
        async with (
            FakeTelegram(TOKEN) as telegram,
            aiohttp.ClientSession() as session,
            aiohttp.ClientSession() as bot_session,
        ):
            # the bot's own session: sharing the driver's 100-connection pool deadlocks once
            # 100 webhooks wait for answers that need a connection to be sent
            bot = NaiveBot(telegram.api_url, fake.base_url)
            bot.session = bot_session
            app = web.Application()
            app.router.add_post("/telegram/webhook", bot.webhook)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            sent_at: dict[str, float] = {}
            cpu0, _ = _rusage()
            started = time.monotonic()

            async def conversation(index: int) -> None:
                chat = 20_000 + index
                for turn in range(turns):
                    text = f"bench c{index} t{turn}"
                    message = text_message(text, chat_id=chat, from_id=chat)
                    update = {"update_id": index * 1000 + turn, "message": message}
                    sent_at[text] = time.monotonic()
                    url = f"http://127.0.0.1:{port}/telegram/webhook"
                    async with session.post(url, json=update) as response:
                        await response.read()

            await asyncio.gather(*(conversation(i) for i in range(conversations)))
            result.seconds = time.monotonic() - started
            cpu1, rss = _rusage()
            result.cpu_seconds, result.peak_rss_mb = cpu1 - cpu0, rss
            result.messages = conversations * turns
            result.answered = len(telegram.calls_of("sendMessage"))
            result.platform_calls = result.answered
            _measure_naive(result, fake, sent_at, telegram)
            await runner.cleanup()
    return result


def _measure_naive(
    result: Result, fake: FakeOpenAI, sent_at: dict[str, float], telegram: FakeTelegram
) -> None:
    sends: dict[str, list[float]] = defaultdict(list)
    for call in telegram.calls_of("sendMessage"):
        sends[str(call.params.get("chat_id"))].append(call.at)
    for request in fake.chat_requests():
        last: Any = request.messages[-1]["content"]
        if last in sent_at:
            result.to_llm_ms.append((request.at - sent_at[last]) * 1000)
            result.prompt_tokens.append(
                sum(4 + len(str(m["content"])) // 4 for m in request.messages)
            )
            chat = last.split(" ")[1][1:]
            times = [t for t in sends.get(str(20_000 + int(chat)), []) if t >= request.at]
            if times:
                result.first_text_ms.append((times[0] - sent_at[last]) * 1000)
