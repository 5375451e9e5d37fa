"""Token counting for the context budget, without ever touching the network.

tiktoken downloads its encoding file on first use. The bot uses tiktoken only when that file
is already in tiktoken's cache (`TIKTOKEN_CACHE_DIR`, else the system temp folder); otherwise
it estimates: one token per 4 bytes of UTF-8 (rounded up), plus 4 tokens per message for the
chat format. The estimate errs high for English and about right for non-Latin scripts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from core.model import Turn

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 4
IMAGE_TOKENS = 765  # one image scaled to `media.image_side`, as OpenAI counts high detail
BYTES_PER_TOKEN = 4
ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}

CountText = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """The documented fallback: ceil(UTF-8 bytes / 4)."""
    return -(-len(text.encode("utf-8", "replace")) // BYTES_PER_TOKEN)


def _cached_encoding_file(name: str) -> Path | None:
    url = ENCODING_URLS.get(name)
    if url is None:
        return None
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "data-gym-cache"
    path = folder / hashlib.sha1(url.encode()).hexdigest()
    return path if path.is_file() else None


class TokenCounter:
    """Counts prompt tokens with tiktoken when its file is cached, else with the estimate."""

    def __init__(self, encoding: str = "o200k_base") -> None:
        self.exact = False
        self._count: CountText = estimate_tokens
        if encoding != "estimate" and _cached_encoding_file(encoding) is not None:
            try:
                import tiktoken

                encoder = tiktoken.get_encoding(encoding)
            except Exception as exc:  # a corrupt cache file must not stop the bot
                log.warning("tiktoken %s unusable (%s); estimating tokens", encoding, exc)
            else:
                self._count = lambda text: len(encoder.encode(text, disallowed_special=()))
                self.exact = True
        if not self.exact:
            log.info("token counts are estimated (tiktoken %s not cached)", encoding)

    def text(self, text: str) -> int:
        return self._count(text)

    def turn(self, turn: Turn) -> int:
        tokens = TOKENS_PER_MESSAGE + self._count(turn.content) + (1 if turn.name else 0)
        return tokens + IMAGE_TOKENS * len(turn.images) if turn.images else tokens

    def turns(self, turns: Sequence[Turn]) -> int:
        return sum(self.turn(turn) for turn in turns)
