"""Configured intents: Rasa-style routing before the model, with no training step.

An intent matches by regular expressions (named groups become entities) or by keywords
(any one, as whole words, ignoring case), and answers with a template filled with the
entities, an HTTP action, or a plugin's handler. A matched intent skips the model. Its
turn is recorded in the history like any other, so the model knows about it later.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.config import Settings
from core.conversation.exchange import Exchange, Policies
from core.model import ContextKey, IntentMatch, Message, Turn
from core.plugins import IntentHandler, PluginError, Plugins
from core.policies.cache import AnswerCache
from core.policies.limits import RateLimiter
from core.policies.masking import Masker
from core.protocols import Responder
from core.routing.router import Route
from core.sections import IntentSettings
from core.storage import Store
from core.streaming.reply import reply
from core.tools.actions import ActionError, HttpActions, action_payload
from core.tools.toolbox import ToolContext

log = logging.getLogger(__name__)

SORRY = "Sorry, I couldn't get that for you just now. Please try again in a moment."
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass
class Intent:
    """One intent, compiled."""

    settings: IntentSettings
    patterns: list[re.Pattern[str]] = field(default_factory=list)
    keywords: list[re.Pattern[str]] = field(default_factory=list)

    @classmethod
    def compile(cls, settings: IntentSettings) -> Intent:
        return cls(
            settings,
            [re.compile(p, re.IGNORECASE) for p in settings.patterns],
            [
                re.compile(rf"(?<!\w){re.escape(k.strip())}(?!\w)", re.IGNORECASE)
                for k in settings.keywords
            ],
        )

    @property
    def name(self) -> str:
        return self.settings.name

    def match(self, text: str) -> dict[str, str] | None:
        """The entities when the text matches, else None."""
        text = clean(text)
        for pattern in self.patterns:
            found = pattern.search(text)
            if found:
                return {k: v.strip() for k, v in found.groupdict().items() if v and v.strip()}
        if any(keyword.search(text) for keyword in self.keywords):
            return {}
        return None


def clean(text: str) -> str:
    """Phones type curly apostrophes; patterns are written with straight ones."""
    return text.replace("’", "'").replace("‘", "'").strip()


class IntentMatcher:
    """The intents in match order: config first, then the plugins'."""

    def __init__(self, intents: Sequence[IntentSettings]) -> None:
        self.intents = [Intent.compile(settings) for settings in intents]

    def match(self, text: str, message: Message | None = None) -> IntentMatch | None:
        for intent in self.intents:
            entities = intent.match(text)
            if entities is not None:
                return IntentMatch(intent.name, entities, clean(text), message)
        return None


def gather_intents(settings: Settings, plugins: Plugins) -> list[IntentSettings]:
    """Config intents and plugin intents, checked: every handler named exists."""
    intents = [*settings.intents, *plugins.intents]
    names: set[str] = set()
    for intent in intents:
        if intent.name in names:
            raise PluginError(f"intents: the name {intent.name!r} is used twice")
        names.add(intent.name)
        if intent.handler and intent.handler not in plugins.handlers:
            known = ", ".join(sorted(plugins.handlers)) or "none: list the plugin under plugins"
            raise PluginError(
                f"intents: {intent.name!r} names the handler {intent.handler!r}, which no plugin "
                f"registered ({known})"
            )
    return intents


def fill(template: str, values: Mapping[str, str]) -> str:
    """`{name}` placeholders replaced by values; unknown ones become empty. Values are never
    re-read as templates, so user text cannot inject placeholders."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template)


class IntentTurn:
    """Answers matched intents: rate limit and cache in one read, the answer, one write."""

    def __init__(
        self,
        matcher: IntentMatcher,
        *,
        store: Store,
        settings: Settings,
        actions: HttpActions | None,
        handlers: Mapping[str, IntentHandler],
        cache: AnswerCache | None,
        limiter: RateLimiter | None,
        claims: bool = False,
        masker: Masker | None = None,
    ) -> None:
        self.matcher = matcher
        self.store = store
        self.settings = settings
        self.actions = actions
        self.handlers = dict(handlers)
        self.cache = cache
        self.exchange = Exchange(store, Policies(limiter=limiter, claims=claims, masker=masker))

    def routes(self) -> list[Route]:
        """One route per intent, named `intent:<name>`, for plain (non-command) messages."""
        return [self._route(intent) for intent in self.matcher.intents]

    def _route(self, intent: Intent) -> Route:
        def matches(message: Message) -> bool:
            return message.command is None and intent.match(message.text) is not None

        async def handle(message: Message, responder: Responder) -> None:
            await self.answer(intent, message, responder)

        return Route(f"intent:{intent.name}", matches, handle)

    async def answer(self, intent: Intent, message: Message, responder: Responder) -> None:
        """Rate limit and cache in one read, the answer, then the turn in one write."""
        found = IntentMatch(
            intent.name, intent.match(message.text) or {}, clean(message.text), message
        )
        log.info("intent %s entities=%s", intent.name, sorted(found.entities))
        key = message.key.scoped(self.settings.scope(message.platform))
        cache_key = ""
        if self.cache is not None and self.cache.settings.enabled and intent.settings.cache:
            cache_key = self.cache.intent_key(intent.name, message.text)
        async with self.store.lock(key, lazy=True) as held:
            opened = await self.exchange.open(
                message, key, lock=held, history=False, cache=cache_key, journal=False
            )
            if opened.refusal is not None:
                await reply(responder, opened.refusal)
                return
            cached = opened.state.cached
            if cached is not None:
                answer, fresh = cached, False
            else:
                answer, fresh = await self._respond(intent, found, key, responder)
            await reply(responder, answer)
            entry = None
            said = self.exchange.mask(message.text, opened)
            # an answer to a text with masked values is not shared through the cache
            if fresh and cache_key and self.cache is not None and said.text == message.text:
                entry = self.cache.entry(cache_key, answer)
            shown = self.exchange.mask(answer, opened, also=said.added)
            asked = Turn("user", said.text, message.user.name, user=message.user.id)
            turns = (asked, Turn("assistant", shown.text))
            await self.exchange.close(
                message, key, turns, lock=held, opened=opened, cache=entry,
                masks={**said.added, **shown.added},
            )  # fmt: skip

    async def _respond(
        self, intent: Intent, found: IntentMatch, key: ContextKey, responder: Responder
    ) -> tuple[str, bool]:
        """The answer and whether it succeeded (only successes are cached)."""
        settings = intent.settings
        if settings.template is not None:
            user = found.message.user.name if found.message else ""
            return fill(settings.template, {"user": user, **found.entities}), True
        try:
            await responder.typing()
        except Exception as exc:  # decoration only
            log.debug("typing failed: %s", type(exc).__name__)
        if settings.action is not None:
            if self.actions is None:
                return SORRY, False
            assert found.message is not None
            context = ToolContext(found.message, key.id)
            payload = action_payload(intent.name, found.entities, found.text, context)
            try:
                return await self.actions.reply_text(settings.action, payload), True
            except ActionError as exc:
                log.info("intent %s: action %s failed: %s", intent.name, settings.action, exc)
                return SORRY, False
        handler = self.handlers[settings.handler or ""]
        try:
            result = handler(found)
            text = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("intent %s: the plugin handler failed", intent.name)
            return SORRY, False
        return (str(text), True) if text else (SORRY, False)
