"""The answer cache: a configured intent's answer, or the model's answer to the first
message of a conversation, served from the store for `cache.ttl_seconds`.

Keys are digests of the persona, the model and the normalised text (intents: the intent's
name and the normalised text), so "What is Redis?" and "what is redis" share an answer.
Never used for a conversation with history: there the same words can mean something else.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from core.sections import CacheSettings
from core.storage import CacheEntry

_SPACES = re.compile(r"\s+")
_EDGES = " \t\n.,;:!?¡¿…'\"«»“”‘’()"


def normalise(text: str) -> str:
    """Case, width, spacing and edge punctuation folded away."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("’", "'")
    return _SPACES.sub(" ", folded).strip(_EDGES)


class AnswerCache:
    """Builds cache keys (digests) and the entries a turn writes."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings

    @property
    def first_turns(self) -> bool:
        return self.settings.enabled and self.settings.first_turn

    @staticmethod
    def chat_key(persona: str, model: str, text: str) -> str:
        return _digest("chat", persona, model, normalise(text))

    @staticmethod
    def intent_key(intent: str, text: str) -> str:
        return _digest("intent", intent, normalise(text))

    def entry(self, key: str, answer: str) -> CacheEntry:
        return CacheEntry(key, answer, self.settings.ttl_seconds)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]
