"""After a crash: answer the messages a dead process was answering.

The journal (stores/redis/journal.py) holds every message whose answer was not yet recorded. At
start, entries of processes whose heartbeat expired are claimed (each by exactly one
replica) and answered anew through the adapter of their platform, after a short note.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from adapters.base import Adapter, Recovers
from bots.assembly import Core
from core.model import Message
from core.protocols import Responder
from core.streaming.reply import reply

log = logging.getLogger(__name__)

RESTART_NOTE = "(I was restarted while answering your message; here is the answer.)"


async def recover_orphans(core: Core, adapters: Sequence[Adapter | Recovers]) -> int:
    """Claim and answer the orphaned messages; return how many were taken up."""
    if core.journal is None:
        return 0
    by_platform = {getattr(a, "name", ""): a for a in adapters if isinstance(a, Recovers)}
    messages = await core.journal.claim_orphans(by_platform)
    tasks = []
    for message in messages:
        adapter = by_platform[message.platform]
        responder = adapter.responder_for(message)
        tasks.append(asyncio.create_task(_answer(core, message, responder)))
    if tasks:
        log.warning("answering %d message(s) left unanswered by a crashed process", len(tasks))
        await asyncio.gather(*tasks)
    return len(tasks)


async def _answer(core: Core, message: Message, responder: Responder) -> None:
    try:
        await reply(responder, RESTART_NOTE)
    except Exception as exc:
        log.warning("restart note not delivered: %s", type(exc).__name__)
    await core.handler(message, responder)
