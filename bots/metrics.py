"""Prometheus metrics for `GET /metrics`, as wrappers around the core's own protocols.

The core stays free of any metrics library: the handler, each responder and the model are
wrapped here, in the composition root. One `CollectorRegistry` per app (no globals), so tests
and several apps in one process never share counters.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core.conversation.intake import Intake
from core.model import Message, MessageRef
from core.protocols import LLM, Handler, LLMError, Responder, StreamCut, Usage

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    """Every metric the bot exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "chatbot_messages_in", "Messages handed to the core", ["platform"], registry=r
        )
        self.answers_out = Counter(
            "chatbot_answers_out", "Final answer messages delivered", ["platform"], registry=r
        )
        self.platform_calls = Counter(
            "chatbot_platform_calls", "Send and edit calls made", ["platform", "call"], registry=r
        )
        self.turn_seconds = Histogram(
            "chatbot_turn_seconds", "Time to handle one message", ["platform"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_seconds = Histogram(
            "chatbot_llm_seconds", "Model call, request to last chunk", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_ttft_seconds = Histogram(
            "chatbot_llm_time_to_first_token_seconds", "Model call, request to first text",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "chatbot_llm_tokens", "Tokens reported by the API", ["kind"], registry=r
        )
        self.errors = Counter("chatbot_errors", "Errors by kind", ["kind"], registry=r)
        self.redis_seconds = Histogram(
            "chatbot_redis_seconds", "Redis round trip (ping sample)", buckets=FAST_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("chatbot_streams_in_flight", "Answers being written now", registry=r)
        self.waiting = Gauge(
            "chatbot_messages_waiting",
            "Messages not answered yet: for an earlier one of their conversation (turn), or "
            "for a free slot under limits.max_in_flight (slot)",
            ["for"],
            registry=r,
        )
        self.intake_restarts = Counter(
            "chatbot_intake_restarts", "Intake loops (polling, gateway) restarted after stopping",
            ["platform"], registry=r,
        )  # fmt: skip

    def watch_intake(self, intake: Intake) -> None:
        """Read the intake's waiting counts at each scrape."""
        self.waiting.labels("turn").set_function(lambda: intake.queued)
        self.waiting.labels("slot").set_function(lambda: intake.waiting)

    def intake_restart(self, platform: str) -> None:
        """The adapters' `on_intake_restart` callback (adapters never import `bots/`)."""
        self.intake_restarts.labels(platform).inc()

    def usage(self, usage: Usage) -> None:
        """The `on_usage` callback of the model client."""
        self.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.tokens.labels("completion").inc(usage.completion_tokens)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def handler(self, inner: Handler) -> Handler:
        """Counts messages, times turns, and meters each message's responder."""

        async def metered(message: Message, responder: Responder) -> None:
            platform = message.platform
            self.messages_in.labels(platform).inc()
            self.in_flight.inc()
            started = time.perf_counter()
            try:
                await inner(message, MeteredResponder(responder, self, platform))
            except Exception as exc:
                self.errors.labels(f"turn:{type(exc).__name__}").inc()
                raise
            finally:
                self.in_flight.dec()
                self.turn_seconds.labels(platform).observe(time.perf_counter() - started)

        return metered


class MeteredResponder:
    """A Responder that counts the calls it passes on (and the failed ones)."""

    def __init__(self, inner: Responder, metrics: Metrics, platform: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._platform = platform
        self.limit = inner.limit
        self.edit_interval = inner.edit_interval
        self.typing_interval = inner.typing_interval
        self.measure = inner.measure

    def __getattr__(self, name: str) -> Any:  # adapter extras pass through untouched
        return getattr(self._inner, name)

    async def _call(self, call: str, final: bool, action: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await action()
        except Exception:
            self._metrics.errors.labels(f"platform_{call}").inc()
            raise
        self._metrics.platform_calls.labels(self._platform, call).inc()
        if final:
            self._metrics.answers_out.labels(self._platform).inc()
        return result

    async def send(self, text: str, *, final: bool) -> MessageRef:
        result: MessageRef = await self._call(
            "send", final, lambda: self._inner.send(text, final=final)
        )
        return result

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        await self._call("edit", final, lambda: self._inner.edit(ref, text, final=final))

    async def typing(self) -> None:
        await self._inner.typing()

    async def delete(self, ref: MessageRef) -> None:
        await self._call("delete", False, lambda: self._inner.delete(ref))


class MeteredLLM:
    """An LLM that times the call and the first token, and counts failures by kind."""

    def __init__(self, inner: LLM, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def stream(
        self, messages: Any, *, model: str, **options: Any
    ) -> AsyncGenerator[Any, None]:
        started = time.perf_counter()
        first = True
        try:
            async for item in self._inner.stream(messages, model=model, **options):
                if first:
                    self._metrics.llm_ttft_seconds.labels(model).observe(
                        time.perf_counter() - started
                    )
                    first = False
                yield item
        except StreamCut:
            self._metrics.errors.labels("llm_stream_cut").inc()
            raise
        except LLMError:
            self._metrics.errors.labels("llm_error").inc()
            raise
        self._metrics.llm_seconds.labels(model).observe(time.perf_counter() - started)
