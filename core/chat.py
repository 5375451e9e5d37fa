"""The chat turn: lock the conversation, read it, stream the model's answer, save the turn.

Failure policy, the same on every platform: the user's message always reaches the history;
a model that fails before writing anything gets a short apology in chat; a model that stops
in the middle leaves the partial answer with a short note, and the history records exactly
what the user was shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.config import Settings
from core.model import ContextKey, Conversation, Message, Turn
from core.prompt import build_prompt
from core.protocols import LLM, LLMError, Responder, Store, StreamCut
from core.streaming import DeliveryError, StreamingReply, reply
from core.tokens import TokenCounter

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I couldn't get an answer from the language model just now. Please try again."
CUT_NOTE = "\n\n_(The answer was cut short: the language model stopped responding.)_"
EMPTY_PROMPT = "How can I help? Send me a question, or /help for what I can do."


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What one chat turn produced (for tests, metrics and logs)."""

    answer: str
    failed: bool
    prompt_tokens: int


class ChatTurn:
    """The `Handler` that asks the model. The last route of the router."""

    def __init__(self, store: Store, llm: LLM, settings: Settings, counter: TokenCounter) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self.counter = counter

    def conversation_key(self, message: Message) -> ContextKey:
        return message.key.scoped(self.settings.scope(message.platform))

    async def __call__(self, message: Message, responder: Responder) -> None:
        await self.run(message, responder)

    async def run(self, message: Message, responder: Responder) -> TurnResult:
        """Answer `message` and record the turn."""
        if not message.text.strip() and not message.attachments:
            await reply(responder, EMPTY_PROMPT)
            return TurnResult(EMPTY_PROMPT, False, 0)
        key = self.conversation_key(message)
        async with self.store.lock(key):
            conversation = await self.store.load(key)
            user_turn = Turn("user", _with_attachments(message), message.user.name)
            prompt = build_prompt(
                system=self._system_prompt(conversation),
                summary=conversation.summary,
                history=conversation.history,
                message=user_turn,
                budget=self.settings.context.token_budget,
                max_turns=self.settings.context.max_turns,
                counter=self.counter,
            )
            answer, failed = await self._stream_answer(
                prompt.messages, self._model(conversation), responder
            )
            turns = [user_turn] + ([Turn("assistant", answer)] if answer else [])
            await self.store.save(key, *turns)
        return TurnResult(answer, failed, prompt.tokens)

    async def _stream_answer(
        self, messages: list[Turn], model: str, responder: Responder
    ) -> tuple[str, bool]:
        """Stream the answer; return what the user was shown and whether the model failed."""
        async with StreamingReply(responder) as answer:
            try:
                async for delta in self.llm.stream(messages, model=model):
                    answer.feed(delta)
            except StreamCut as exc:
                log.warning("model stream cut: %s", exc)
                if answer.text.strip():
                    answer.feed(CUT_NOTE)
                    return await self._finish(answer), True
                return await self._apologise(responder), True
            except LLMError as exc:
                log.warning("model call failed: %s", exc)
                return await self._apologise(responder), True
            if not answer.text.strip():
                log.warning("model returned an empty answer")
                return await self._apologise(responder), True
            return await self._finish(answer), False

    async def _finish(self, answer: StreamingReply) -> str:
        try:
            return await answer.finish()
        except DeliveryError:
            log.error("the platform refused the answer; it is kept in the history")
            return answer.text

    async def _apologise(self, responder: Responder) -> str:
        try:
            await reply(responder, APOLOGY)
        except Exception as exc:
            log.error("could not even send the apology: %s", type(exc).__name__)
            return ""
        return ""

    def _system_prompt(self, conversation: Conversation) -> str:
        personas = self.settings.personas
        name = conversation.persona if conversation.persona in personas else ""
        return personas[name or self.settings.default_persona].system_prompt

    def _model(self, conversation: Conversation) -> str:
        allowed = self.settings.llm.models
        return conversation.model if conversation.model in allowed else self.settings.llm.model


def _with_attachments(message: Message) -> str:
    if not message.attachments:
        return message.text
    names = ", ".join(a.name for a in message.attachments)
    return f"{message.text}\n\n[attached: {names}]".strip()
