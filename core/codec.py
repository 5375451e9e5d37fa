"""Core values as JSON: a message (the answer journal, a pending approval) and the turns of a
prompt (tool calls included), so a store keeps them as opaque text and gives them back."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from core.model import (
    Attachment,
    Command,
    ContextKey,
    Image,
    MediaKind,
    Message,
    ToolCall,
    Turn,
    User,
)


def message_to_json(message: Message) -> str:
    return json.dumps(plain(message), ensure_ascii=False, separators=(",", ":"))


def plain(value: Any) -> Any:
    """`dataclasses.asdict` without its deep copy of every leaf value (the values are frozen
    and only serialised): a third of the journal's cost per message (`python -m bench`)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value


def message_from_json(raw: str | bytes) -> Message | None:
    try:
        return message_from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def message_from_dict(data: dict[str, Any]) -> Message:
    """Raises KeyError, TypeError or ValueError on a malformed message."""
    command = data.get("command")
    return Message(
        platform=data["platform"],
        key=ContextKey(**data["key"]),
        user=User(**data["user"]),
        text=data["text"],
        message_id=data["message_id"],
        addressed=data.get("addressed", True),
        command=Command(**command) if command else None,
        attachments=tuple(_attachment(a) for a in data.get("attachments", ())),
        delivery_id=data.get("delivery_id", ""),
        order=data.get("order", ""),
        follow_up=data.get("follow_up", False),
        private=data.get("private", False),
        extras=tuple((str(k), str(v)) for k, v in data.get("extras", ())),
    )


def _attachment(data: dict[str, Any]) -> Attachment:
    if "url" in data:  # written before attachments had a fetch handle and a kind
        data = {**data, "handle": data.pop("url")}
    return Attachment(**{**data, "kind": MediaKind(data.get("kind", MediaKind.OTHER))})


def turn_to_dict(turn: Turn) -> dict[str, Any]:
    """A prompt turn whole (tool calls, the call a result answers); images keep only their
    id and type, never their bytes."""
    data: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.name:
        data["name"] = turn.name
    if turn.tool_calls:
        data["tool_calls"] = [plain(call) for call in turn.tool_calls]
    if turn.tool_call_id:
        data["tool_call_id"] = turn.tool_call_id
    if turn.user:
        data["user"] = turn.user
    if turn.images:
        data["images"] = [[image.id, image.mime_type] for image in turn.images]
    return data


def turn_from_dict(data: dict[str, Any]) -> Turn:
    return Turn(
        data["role"],
        data["content"],
        data.get("name", ""),
        tool_calls=tuple(ToolCall(**call) for call in data.get("tool_calls", ())),
        tool_call_id=data.get("tool_call_id", ""),
        user=data.get("user", ""),
        images=tuple(Image(str(i), str(m)) for i, m in data.get("images", ())),
    )
