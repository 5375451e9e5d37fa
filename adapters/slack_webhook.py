"""Slack's HTTP requests checked before slack-bolt sees them.

Bolt verifies signatures too, but logs every refused request's whole raw body at INFO
(`RequestVerification._debug_log_error`), and its body parser raises on a signed body that is
not what Slack sends (a JSON list, `payload=%7Bnot-json`), which aiohttp answers with 500 and a
traceback. So the signature is verified here with the SDK's own `SignatureVerifier`, then the
shape bolt relies on is checked the way bolt's `parse_body` reads it; `guarded` answers the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from slack_sdk.signature import SignatureVerifier

from adapters.webhook_guard import Refused, json_object


def verified_text(verifier: SignatureVerifier, raw: bytes, headers: Mapping[str, str]) -> str:
    """The body as text if Slack signed it within the last 5 minutes, else `Refused`."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not timestamp or not signature:
        raise Refused(401, "unsigned")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise Refused(401, "the timestamp is not a number")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None
    if not verifier.is_valid(text, timestamp, signature):
        raise Refused(401, "bad or stale signature")
    return text


def check_shape(text: str, content_type: str) -> None:
    """Refuse what bolt's `parse_body` and its listeners' matching would raise on."""
    if content_type == "application/json" or text.startswith("{"):
        body = json_object(text)
    elif "payload" in text:  # interactivity: a form whose `payload` field is JSON
        body = json_object(dict(parse_qsl(text, keep_blank_values=True)).get("payload", "{}"))
    else:
        return  # a slash command's form: every value is a string
    _check_fields(body)


def _check_fields(body: dict[str, Any]) -> None:
    for name in ("event", "view", "message", "channel", "user", "team", "container"):
        if body.get(name) is not None and not isinstance(body[name], dict | str):
            raise Refused(400, f"`{name}` is not an object")
    if isinstance(body.get("event"), str):
        raise Refused(400, "`event` is not an object")
    for name in ("authorizations", "actions"):
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            raise Refused(400, f"`{name}` is not a list of objects")
