"""The SDK floor: what any bot on these SDKs spends per message, with nothing of ours on top.

The same process, adapters, SDK clients and HTTP server as the real bot, but each message
goes to the model as it is (no history, no Redis, no routing, checks or streamed edits) and
its whole answer is sent in one platform call. Delivery dedupe is a set in memory. CPU per
message here is the part of the bot's that only a different SDK or transport could lower;
the bot's own figure minus this one is what the core costs (`python -m bench --floor`).
"""

from __future__ import annotations

from bots.app import BotApp
from core.llm.openai_chat import OpenAIChat
from core.model import Message, Turn
from core.protocols import Responder


class MemoryDeduper:
    """Delivery dedupe without Redis: enough for one process and one benchmark run."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    async def first_seen(self, namespace: str, delivery_id: str) -> bool:
        key = (namespace, delivery_id)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class FloorHandler:
    """The model's streamed answer, read whole, then one send."""

    def __init__(self, llm: OpenAIChat, model: str, deduper: MemoryDeduper) -> None:
        self.llm = llm
        self.model = model
        self.deduper = deduper

    async def __call__(self, message: Message, responder: Responder) -> None:
        if message.delivery_id and not await self.deduper.first_seen(
            message.platform, message.delivery_id
        ):
            return
        parts = [
            event
            async for event in self.llm.stream([Turn("user", message.text)], model=self.model)
            if isinstance(event, str)
        ]
        await responder.send("".join(parts), final=True)


def install_floor(app: BotApp) -> None:
    """Point the started app's adapters at the floor handler and the in-memory dedupe."""
    assert app.core is not None, "start the app first"
    deduper = MemoryDeduper()
    handler = FloorHandler(app.core.llm, app.settings.llm.model, deduper)
    for adapter in app.adapters:
        adapter.handler = handler  # type: ignore[attr-defined]
        adapter.deduper = deduper  # type: ignore[attr-defined]
