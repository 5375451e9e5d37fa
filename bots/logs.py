"""Logging for the whole process: one line per event with the turn id, secrets masked.

Every record passes a redaction filter that replaces each configured secret value with
`***`, so a token that slips into an exception or a URL never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from core.conversation.turns import TurnIdFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s turn=%(turn)s %(message)s"


class RedactSecrets(logging.Filter):
    """Masks secret values in the final message of every record."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = logging.Formatter().formatException(record.exc_info)
            if any(secret in text for secret in self.secrets):
                # The traceback holds a secret: keep the kind, drop the details.
                record.exc_info, record.exc_text = None, None
                masked += f" [traceback hidden: {type(error).__name__}]"
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines (`log_format: json`)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "turn": getattr(record, "turn", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(
    level: str, secrets: Iterable[str], stream: TextIO | None = None, fmt: str = "text"
) -> None:
    """Configure the root logger once, for `chatbot run` and `chatbot chat`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    handler.addFilter(TurnIdFilter())
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
