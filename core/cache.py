"""The answer cache: a configured intent's answer, or the model's answer to the first
message of a conversation, served from Redis for `cache.ttl_seconds`.

Keys are digests of the persona, the model and the normalised text (intents: the intent's
name and the normalised text), so "What is Redis?" and "what is redis" share an answer.
Never used for a conversation with history: there the same words can mean something else.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from core.keys import KeyBuilder
from core.protocols import Queue
from core.sections import CacheSettings

_SPACES = re.compile(r"\s+")
_EDGES = " \t\n.,;:!?¡¿…'\"«»“”‘’()"


def normalise(text: str) -> str:
    """Case, width, spacing and edge punctuation folded away."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("’", "'")
    return _SPACES.sub(" ", folded).strip(_EDGES)


class AnswerCache:
    """Builds cache keys and the pipeline commands that read and write them."""

    def __init__(self, keys: KeyBuilder, settings: CacheSettings) -> None:
        self.keys = keys
        self.settings = settings

    @property
    def first_turns(self) -> bool:
        return self.settings.enabled and self.settings.first_turn

    def chat_key(self, persona: str, model: str, text: str) -> str:
        return self.keys.cache(_digest("chat", persona, model, normalise(text)))

    def intent_key(self, intent: str, text: str) -> str:
        return self.keys.cache(_digest("intent", intent, normalise(text)))

    @staticmethod
    def queue_get(key: str) -> Queue:
        return lambda pipe: pipe.get(key)

    def queue_set(self, key: str, answer: str) -> Queue:
        ttl = self.settings.ttl_seconds
        return lambda pipe: pipe.set(key, answer, ex=ttl)

    @staticmethod
    def decode(raw: Any) -> str | None:
        """A cached answer from a GET result, else None (a miss, or Redis away)."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        return raw if isinstance(raw, str) and raw else None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]
