"""The model ↔ tools loop of one chat turn.

model → tool calls (run in parallel) → results → model, at most `max_steps` rounds of
tools; the last call offers the tools with `tool_choice="none"` so the model must answer in
words. Text the model writes in any round streams to the user as it comes (rounds are
separated by a blank line), so "Let me check…" shows at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass

from core.model import ToolCall, Turn
from core.protocols import LLM, Usage
from core.streaming.reply import StreamingReply
from core.tools.toolbox import Toolbox, ToolContext

log = logging.getLogger(__name__)

STEP_LIMIT_NOTE = "\n\n_(I stopped after {steps} rounds of tool use without a final answer.)_"


@dataclass(frozen=True, slots=True)
class Waiting:
    """A round of tool calls held for a person's approval: the prompt up to the model's
    request (its last turn carries the calls), to go on from once they decide."""

    prompt: tuple[Turn, ...]
    calls: tuple[ToolCall, ...]


@dataclass
class LoopStats:
    """What the loop did so far; kept up to date even when a call fails midway."""

    usage: Usage | None = None
    model_calls: int = 0
    tool_rounds: int = 0
    tool_calls: int = 0
    step_limit: bool = False
    waiting: Waiting | None = None  # the loop stopped for an approval

    def add(self, usage: Usage) -> None:
        self.usage = usage if self.usage is None else self.usage + usage


async def run_model(
    llm: LLM,
    messages: Sequence[Turn],
    *,
    model: str,
    toolbox: Toolbox | None,
    context: ToolContext,
    out: StreamingReply,
    max_steps: int,
    stats: LoopStats,
) -> None:
    """Stream the model's answer into `out`, running the tools it asks for on the way.

    Raises LLMError / StreamCut from the model; tools never raise (errors become results).
    """
    prompt = list(messages)
    specs = toolbox.specs() if toolbox else []
    while True:
        last = stats.tool_rounds >= max_steps
        calls: list[ToolCall] = []
        said: list[str] = []
        separate = bool(out.text.strip())
        stats.model_calls += 1
        stream = llm.stream(
            prompt, model=model, tools=specs, tool_choice="none" if specs and last else None
        )
        async with aclosing(stream):  # closed at once when the answer is cut at its bound
            async for event in stream:
                if isinstance(event, Usage):
                    stats.add(event)
                elif isinstance(event, ToolCall):
                    calls.append(event)
                elif event:
                    if separate:
                        out.feed("\n\n")
                        separate = False
                    said.append(event)
                    out.feed(event)
                    if out.capped:
                        log.warning("answer cut at its bound (llm.max_answer_chars, "
                                    "streaming.max_messages)")  # fmt: skip
                        return
        if not calls:
            return
        if last or toolbox is None:
            log.warning("the model still asked for tools after %d rounds", stats.tool_rounds)
            stats.step_limit = True
            out.feed(STEP_LIMIT_NOTE.format(steps=stats.tool_rounds))
            return
        stats.tool_rounds += 1
        stats.tool_calls += len(calls)
        log.info("tool round %d: %s", stats.tool_rounds, ", ".join(c.name for c in calls))
        prompt.append(Turn("assistant", "".join(said), tool_calls=tuple(calls)))
        if toolbox.needs_approval(calls):  # the whole round waits: nothing runs before a yes
            stats.waiting = Waiting(tuple(prompt), tuple(calls))
            return
        prompt.extend(await toolbox.run_all(calls, context))
