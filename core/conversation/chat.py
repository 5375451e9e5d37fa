"""The chat turn: lock the conversation, read it, stream the model's answer, save the turn.

Failure policy, the same on every platform: the user's message always reaches the history;
a model that fails before writing anything gets a short apology in chat; a model that stops
in the middle leaves the partial answer with a short note, and the history records exactly
what the user was shown. Optional parts (moderation, tools, the cache, the summary) never
stop an answer when they fail.

Store round trips of a turn, the conversation lock included: ONE read (the lock, history,
settings, the channel's defaults, the rate-limit bucket, today's usage, a cached first
answer) and ONE write (the turn, usage counters, the cache, the lock's release), both
through `core/conversation/exchange.py`, which the intent turn shares. A first turn whose
persona or model is not the default reads the cache once more. The summary runs afterwards,
in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from core.config import Settings
from core.conversation.exchange import Exchange, Policies
from core.conversation.memory import Summarizer, needs_summary
from core.conversation.prompt import build_prompt
from core.llm.moderation import Moderator, Verdict
from core.llm.tokens import TokenCounter
from core.llm.toolloop import LoopStats, run_model
from core.media.reader import Gathered, MediaReader, heard_line
from core.media.speech import Speaker
from core.model import ContextKey, Conversation, Decision, Message, Turn
from core.policies.cache import AnswerCache
from core.policies.limits import RateLimiter, TokenBudget
from core.policies.masking import Masker
from core.policies.usage import UsageBook
from core.protocols import LLM, DecisionReply, LLMError, Responder, StreamCut, Usage
from core.storage import Store, TurnLock
from core.streaming.reply import DeliveryError, StreamingReply, reply
from core.tools.approvals import GONE, Approvals, Outcome, PendingApproval, not_run
from core.tools.toolbox import Toolbox, ToolContext

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I couldn't get an answer from the language model just now. Please try again."
CUT_NOTE = "\n\n_(The answer was cut short: the language model stopped responding.)_"
INTERRUPTED_NOTE = "\n\n_(Interrupted: I am restarting. The full answer follows shortly.)_"
EMPTY_PROMPT = "How can I help? Send me a question, or /help for what I can do."


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What one chat turn produced (for tests, metrics and logs)."""

    answer: str
    failed: bool
    prompt_tokens: int
    usage: Usage | None = None
    tool_rounds: int = 0
    cached: bool = False
    refused: bool = False


@dataclass
class Features:
    """The optional parts of a chat turn; each is None (or off) when unused."""

    toolbox: Toolbox | None = None
    usage: UsageBook | None = None
    limiter: RateLimiter | None = None
    budget: TokenBudget | None = None
    moderator: Moderator | None = None
    cache: AnswerCache | None = None
    memory: Summarizer | None = None
    journal: bool = False  # messages being answered are journaled (a crash loses none)
    claims: bool = False  # the message's delivery claim leaves in the turn's write
    masker: Masker | None = None  # `privacy.mask`
    media: MediaReader | None = None  # files in: images, voice, documents
    speaker: Speaker | None = None  # `/voice on`
    vision_model: str | None = None  # `llm.vision_model`: turns that show the model images
    history_images: int = 4  # `media.history_images`
    image_ttl: int = 86400  # `media.image_ttl_hours`, in seconds
    approvals: Approvals | None = None  # tools that run only after a person's yes

    def policies(self) -> Policies:
        return Policies(
            self.limiter, self.budget, self.usage, self.journal, self.claims, self.masker,
            self.image_ttl,
        )  # fmt: skip


class ChatTurn:
    """The `Handler` that asks the model. The last route of the router."""

    def __init__(
        self,
        store: Store,
        llm: LLM,
        settings: Settings,
        counter: TokenCounter,
        features: Features | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self.counter = counter
        self.features = features or Features()
        self.exchange = Exchange(store, self.features.policies())
        f = self.features  # an answer resumed after an approval: not a new message
        self.resuming = Exchange(store, Policies(usage=f.usage, masker=f.masker))

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
        # A message with files has them read once the turn may go on (the rate limit and the
        # budget first: no download nor paid transcription for a refused message) and while
        # its journal entry stands (a crash meanwhile is answered again).
        files = bool(message.attachments) and self.features.media is not None
        gathered = None if files else Gathered(_named_attachments(message))
        moderator = self.features.moderator
        # Moderation runs while the turn waits for the lock and reads Redis.
        screening = None
        if moderator is not None and gathered is not None:  # masked: a model provider too
            screened = self.exchange.mask(gathered.text).text
            screening = asyncio.create_task(moderator.check(screened))
        try:
            async with self.store.lock(key, lazy=True) as held:
                try:
                    result, summarise = await self._locked(
                        message, key, responder, screening, held, gathered
                    )
                except Exception:
                    await self.exchange.forget(message, key)
                    raise
        finally:
            if screening is not None and not screening.done():
                screening.cancel()
        if summarise is not None and self.features.memory is not None:
            self.features.memory.schedule(key, *summarise)
        return result

    async def _locked(
        self,
        message: Message,
        key: ContextKey,
        responder: Responder,
        screening: asyncio.Task[Verdict] | None,
        held: TurnLock,
        gathered: Gathered | None,
    ) -> tuple[TurnResult, tuple[list[Turn], str, str] | None]:
        f = self.features
        default_key = ""
        if f.cache is not None and f.cache.first_turns and gathered and not message.attachments:
            # The likely key (default persona and model) is read speculatively: no extra trip.
            # A first turn's placeholders are numbered afresh, as they are here.
            first_said = self.exchange.mask(gathered.text).text
            default_key = f.cache.chat_key(self._persona(None), self._model(None), first_said)
        opened = await self.exchange.open(message, key, lock=held, cache=default_key)
        refusal = opened.refusal
        if refusal is None and gathered is None:
            gathered = await self._gather(message, responder)
            if gathered.empty:
                if not gathered.problems:
                    await reply(responder, EMPTY_PROMPT)
                await self.exchange.forget(message, key)
                return TurnResult(EMPTY_PROMPT, False, 0, refused=True), None
            if f.moderator is not None:
                screened = self.exchange.mask(gathered.text, opened).text
                refusal = f.moderator.refusal(await f.moderator.check(screened))
        if refusal is None and screening is not None and f.moderator is not None:
            refusal = f.moderator.refusal(await screening)
        if refusal is not None or gathered is None:
            refusal = refusal or APOLOGY
            await reply(responder, refusal)  # not recorded: it never reached the model
            await self.exchange.forget(message, key)
            return TurnResult(refusal, False, 0, refused=True), None
        masked = self.exchange.mask(gathered.text, opened)  # what the model, history and cache see
        user_turn = Turn(
            "user", masked.text, message.user.name, user=message.user.id,
            images=tuple(gathered.images),
        )  # fmt: skip
        conversation = opened.state.conversation
        persona, model = self._persona(conversation), self._model(conversation)
        cache_key = ""
        first_turn = not conversation.history and not conversation.summary
        if f.cache is not None and default_key and first_turn:
            cache_key = f.cache.chat_key(persona, model, user_turn.content)
            cached = opened.state.cached
            if cache_key != default_key:
                cached = await self.store.cached(cache_key)
            if cached is not None:
                await reply(responder, cached)
                served = (user_turn, Turn("assistant", cached))
                await self.exchange.close(
                    message, key, served, lock=held, opened=opened, masks=masked.added
                )
                return TurnResult(cached, False, 0, cached=True), None
        history = await self._with_images(key, conversation.history)
        prompt = build_prompt(
            system=self.settings.personas[persona].system_prompt,
            summary=conversation.summary,
            history=history,
            message=user_turn,
            budget=self.settings.context.token_budget,
            max_turns=self.settings.context.max_turns,
            counter=self.counter,
        )
        if f.vision_model and any(turn.images for turn in prompt.messages):
            model = f.vision_model
        context = ToolContext(message, key.id, responder)
        stats = LoopStats()
        answer, failed = await self._stream_answer(
            prompt.messages, model, responder, context, stats
        )
        usage = stats.usage
        if usage is None and stats.model_calls and answer and not failed:
            usage = Usage(prompt.tokens, self.counter.text(answer))  # the server sent none
        if stats.waiting is not None and not failed:
            note = await self._ask_approval(message, responder, stats, model)
            answer = f"{answer}\n\n{note}".strip()
        entry = None
        unmasked = masked.text == gathered.text  # an answer to masked values is not shared
        if cache_key and f.cache is not None and answer and not failed and not stats.tool_rounds:
            entry = f.cache.entry(cache_key, answer) if unmasked else None
        # the model may repeat a value a tool gave it: the history keeps placeholders only
        kept = self.exchange.mask(answer, opened, also=masked.added)
        turns = [user_turn] + ([Turn("assistant", kept.text)] if answer else [])
        await self.exchange.close(
            message, key, turns, lock=held, opened=opened, usage=usage, cache=entry,
            masks={**masked.added, **kept.added}, drawn=context.counts["images"],
        )  # fmt: skip
        result = TurnResult(answer, failed, prompt.tokens, usage, stats.tool_rounds)
        speak = stats.waiting is None and not failed
        if conversation.voice and answer and speak and f.speaker is not None:
            await f.speaker.speak(answer, responder)
        stored = [*conversation.history, *turns][-self.settings.context.max_turns :]
        memory = f.memory
        if (
            memory is not None
            and memory.enabled
            and needs_summary(prompt.dropped, len(stored), self.settings.context.max_turns)
        ):
            return result, (stored, conversation.summary, model)
        return result, None

    async def _stream_answer(
        self,
        messages: list[Turn],
        model: str,
        responder: Responder,
        context: ToolContext,
        stats: LoopStats,
    ) -> tuple[str, bool]:
        """Stream the answer; return what the user was shown and whether the model failed."""
        streaming = self.settings.streaming
        async with StreamingReply(
            responder,
            typing_delay=streaming.typing_delay,
            max_chars=self.settings.llm.max_answer_chars,
            max_messages=streaming.max_messages,
        ) as answer:
            try:
                await run_model(
                    self.llm,
                    messages,
                    model=model,
                    toolbox=self.features.toolbox,
                    context=context,
                    out=answer,
                    max_steps=self.settings.tools.max_steps,
                    stats=stats,
                )
            except asyncio.CancelledError:
                # Shutdown outlived its grace: the partial answer says so, and the journal
                # entry stays so that another process answers anew after the restart.
                if answer.text.strip():
                    answer.feed(INTERRUPTED_NOTE)
                    with contextlib.suppress(Exception):
                        await answer.finish()
                raise
            except StreamCut as exc:
                log.warning("model stream cut: %s", exc)
                if answer.text.strip():
                    answer.feed(CUT_NOTE)
                    return await self._finish(answer), True
                return await self._apologise(responder, answer), True
            except LLMError as exc:
                log.warning("model call failed: %s", exc)
                if answer.text.strip():  # a later tool round failed: keep what was shown
                    answer.feed(CUT_NOTE)
                    return await self._finish(answer), True
                return await self._apologise(responder, answer), True
            if not answer.text.strip() and stats.waiting is None:
                log.warning("model returned an empty answer")
                return await self._apologise(responder, answer), True
            return await self._finish(answer), False

    async def _ask_approval(
        self, message: Message, responder: Responder, stats: LoopStats, model: str
    ) -> str:
        assert stats.waiting is not None
        if self.features.approvals is None:  # a tool marked approve with no way to ask
            return "[not run: the tool needs an approval]"
        try:
            return await self.features.approvals.ask(
                message, responder, prompt=stats.waiting.prompt, calls=stats.waiting.calls,
                model=model, rounds=stats.tool_rounds,
            )  # fmt: skip
        except Exception as exc:
            log.error("asking for an approval failed: %s", type(exc).__name__)
            await reply(responder, "Sorry, I couldn't ask for the approval this needs.")
            return "[not run: the approval could not be asked for]"

    async def decide(
        self,
        decision: Decision,
        answer: DecisionReply,
        responder_for: Callable[[Message], Responder],
    ) -> None:
        """A press of Approve or Deny: run the calls (or tell the model they were not run)
        and let the model finish its answer, as a new message where it was asked."""
        approvals = self.features.approvals
        if approvals is None:
            await answer.notice(GONE)
            return
        taken = await approvals.take(decision, answer)
        if taken is None:
            return
        pending, outcome = taken
        responder = responder_for(pending.message)
        try:
            await self.resume(pending, outcome, responder)
        except Exception:
            log.exception("the answer after an approval failed")
            with contextlib.suppress(Exception):
                await reply(responder, APOLOGY)

    async def resume(
        self, pending: PendingApproval, outcome: Outcome, responder: Responder
    ) -> TurnResult:
        """The answer after a decision: one read, the calls' results, the model, one write
        (the rest of the answer joins the history)."""
        message = pending.message
        key = self.conversation_key(message)
        context = ToolContext(message, key.id, responder)
        toolbox = self.features.toolbox
        if outcome == "approved" and toolbox is not None:
            results = await toolbox.run_all(pending.calls, context)
        else:
            results = not_run(pending.calls, outcome)
        async with self.store.lock(key, lazy=True) as held:
            opened = await self.resuming.open(message, key, lock=held, history=False)
            stats = LoopStats(tool_rounds=pending.rounds)
            # the images the question showed: the record keeps their ids only
            prompt = [*await self._with_images(key, list(pending.prompt)), *results]
            answer, failed = await self._stream_answer(
                prompt, pending.model, responder, context, stats
            )
            if stats.waiting is not None and not failed:
                note = await self._ask_approval(message, responder, stats, pending.model)
                answer = f"{answer}\n\n{note}".strip()
            kept = self.resuming.mask(answer, opened)
            # whose it is (exports, erasure): other turns may have come in between
            said = Turn("assistant", kept.text, user=message.user.id)
            await self.resuming.close(
                message, key, [said] if answer else [], lock=held, opened=opened,
                usage=stats.usage, masks=kept.added, drawn=context.counts["images"],
            )  # fmt: skip
        return TurnResult(answer, failed, 0, stats.usage, stats.tool_rounds)

    async def _finish(self, answer: StreamingReply) -> str:
        try:
            return await answer.finish()
        except DeliveryError:
            log.error("the platform refused the answer; it is kept in the history")
            return answer.text

    async def _apologise(self, responder: Responder, answer: StreamingReply) -> str:
        await answer.stop()  # a late typing signal must not follow the apology
        try:
            await reply(responder, APOLOGY)
        except Exception as exc:
            log.error("could not even send the apology: %s", type(exc).__name__)
            return ""
        return ""

    def _persona(self, conversation: Conversation | None) -> str:
        """The conversation's choice, else the channel's default, else the configured one."""
        personas = self.settings.personas
        for name in (conversation.persona, conversation.channel_persona) if conversation else ():
            if name in personas:
                return name
        return self.settings.default_persona

    def _model(self, conversation: Conversation | None) -> str:
        allowed = self.settings.llm.models
        for name in (conversation.model, conversation.channel_model) if conversation else ():
            if name in allowed:
                return name
        return self.settings.llm.model

    async def _gather(self, message: Message, responder: Responder) -> Gathered:
        """The message's text with its files read in; what was heard is quoted first and
        each file that could not be read gets its sentence, before the answer."""
        reader = self.features.media
        assert reader is not None
        gathered = await reader.read(message, responder)
        notes = ([heard_line(gathered.heard)] if gathered.heard else []) + gathered.problems
        if notes:
            await reply(responder, "\n\n".join(notes))
        return gathered

    async def _with_images(self, key: ContextKey, history: list[Turn]) -> list[Turn]:
        """The history with the bytes of its most recent images (`media.history_images`)
        read back for the model; older or expired ones stay only as their `[image: name]`.
        A text-only conversation costs nothing here (no extra round trip)."""
        wanted = [image.id for turn in history for image in turn.images]
        if not wanted:
            return history
        keep = self.features.history_images
        found = await self.store.images(key, wanted[-keep:]) if keep else {}
        return [
            replace(turn, images=tuple(
                replace(image, data=found[image.id]) for image in turn.images
                if image.id in found
            )) if turn.images else turn
            for turn in history
        ]  # fmt: skip


def _named_attachments(message: Message) -> str:
    if not message.attachments:
        return message.text
    names = ", ".join(a.name for a in message.attachments)
    return f"{message.text}\n\n[attached: {names}]".strip()
