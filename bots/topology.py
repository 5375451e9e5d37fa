"""What `/healthz` and `/metrics` say about the streams between an ingress and its workers.

Each scrape reads every partition's lag from Redis (one pipeline per partition) and exports
it with this process's own counters: what the ingress appended, what the worker answered and
took over. Any process of the deployment shows the streams; each shows its own counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bots.ingress import Ingress
from bots.worker import Worker
from stores.redis.health import FAILURES
from stores.redis.streams import Lag, RedisStreams


class Topology(Collector):
    """The role of this process and the state of the streams it uses."""

    def __init__(
        self,
        role: str,
        streams: RedisStreams,
        *,
        ingress: Ingress | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.role = role
        self.streams = streams
        self.ingress = ingress
        self.worker = worker
        self.lags: dict[int, Lag] = {}

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    async def refresh(self) -> None:
        """Read every partition's lag (kept for the exposition). Redis away: none shown."""
        try:
            lags = await asyncio.gather(
                *(self.streams.lag(p) for p in range(self.streams.partitions))
            )
        except FAILURES:
            self.lags = {}
            return
        self.lags = dict(enumerate(lags))

    def ready(self) -> bool:
        return self.worker is None or self.worker.ready()

    async def status(self) -> dict[str, object]:
        """For `/healthz`: the role, the streams' totals, this worker's share."""
        await self.refresh()
        lags = self.lags.values()
        status: dict[str, object] = {
            "role": self.role,
            "streams": {
                "partitions": self.streams.partitions,
                "waiting": sum(lag.waiting for lag in lags),
                "pending": sum(lag.pending for lag in lags),
                "length": sum(lag.length for lag in lags),
                "oldest_age": round(max((lag.oldest_age for lag in lags), default=0.0), 3),
            },
        }
        if self.ingress is not None:
            status["ingress"] = {
                "appended": self.ingress.appended,
                "duplicates": self.ingress.duplicates,
                "failed": self.ingress.failed,
            }
        if self.worker is not None:
            status["worker"] = {
                "id": self.worker.id,
                "partitions": sorted(self.worker.owned),
                "workers": self.worker.live,
                "holding": self.worker.holding,
                "turns": self.worker.turns,
                "retaken": self.worker.retaken,
            }
        return status

    def collect(self) -> Iterator[Metric]:
        families = {
            "length": GaugeMetricFamily(
                "chatbot_stream_length", "Entries in a partition's stream", labels=["partition"]
            ),
            "waiting": GaugeMetricFamily(
                "chatbot_stream_waiting", "Entries no worker has read yet", labels=["partition"]
            ),
            "pending": GaugeMetricFamily(
                "chatbot_stream_pending",
                "Entries read and not acknowledged",
                labels=["partition"],
            ),
            "oldest_age": GaugeMetricFamily(
                "chatbot_stream_oldest_seconds",
                "Age of the oldest entry not acknowledged (0: none)",
                labels=["partition"],
            ),
        }
        per_consumer = GaugeMetricFamily(
            "chatbot_stream_consumer_pending", "Entries each worker holds", labels=["worker"]
        )
        held: dict[str, int] = {}
        for partition, lag in self.lags.items():
            for name, family in families.items():
                family.add_metric([str(partition)], float(getattr(lag, name)))
            for consumer, count in lag.consumers.items():
                held[consumer] = held.get(consumer, 0) + count
        for consumer, count in held.items():
            per_consumer.add_metric([consumer], count)
        yield from families.values()
        yield per_consumer
        if self.ingress is not None:
            appended = CounterMetricFamily(
                "chatbot_ingress_appended", "Messages appended for the workers", labels=["kind"]
            )
            appended.add_metric(["new"], self.ingress.appended)
            appended.add_metric(["duplicate"], self.ingress.duplicates)
            appended.add_metric(["failed"], self.ingress.failed)
            yield appended
        if self.worker is not None:
            turns = CounterMetricFamily(
                "chatbot_worker_turns", "Stream entries this worker answered", labels=["worker"]
            )
            turns.add_metric([self.worker.id], self.worker.turns)
            retaken = CounterMetricFamily(
                "chatbot_worker_claims",
                "Entries taken over from a worker that stopped (XAUTOCLAIM)", labels=["worker"],
            )  # fmt: skip
            retaken.add_metric([self.worker.id], self.worker.retaken)
            owned = GaugeMetricFamily(
                "chatbot_worker_partitions", "Partitions this worker reads", labels=["worker"]
            )
            owned.add_metric([self.worker.id], len(self.worker.owned))
            yield from (turns, retaken, owned)
