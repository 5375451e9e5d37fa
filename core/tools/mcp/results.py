"""An MCP tool result as the model sees it: text, the structured value as JSON, short notes
for what text cannot carry (an image is posted in the chat where the platform takes files).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from mcp_types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
)

from core.model import MediaKind, OutgoingFile


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What one call gave: the model's text and the images to post."""

    text: str
    error: bool = False
    files: list[OutgoingFile] = field(default_factory=list)


def convert(result: CallToolResult, *, tool: str) -> ToolOutput:
    """The result's content in order, text blocks that only repeat `structuredContent` left
    out (servers send both, as the spec asks), the structured value last, as JSON."""
    parts: list[str] = []
    files: list[OutgoingFile] = []
    structured = result.structured_content
    for block in result.content:
        if isinstance(block, TextContent):
            if structured is None or not _same_json(block.text, structured):
                parts.append(block.text)
        elif isinstance(block, ImageContent):
            data = _decode(block.data)
            parts.append(f"[image: {block.mime_type}, {len(data)} bytes]")
            if data:
                name = f"{tool}-{len(files) + 1}.{_extension(block.mime_type)}"
                files.append(OutgoingFile(data, name, block.mime_type, MediaKind.IMAGE))
        elif isinstance(block, AudioContent):
            parts.append(f"[audio: {block.mime_type}, {len(_decode(block.data))} bytes]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, BlobResourceContents):
                size = len(_decode(resource.blob))
                kind = resource.mime_type or "application/octet-stream"
                parts.append(f"[resource: {resource.uri}, {kind}, {size} bytes]")
            else:
                parts.append(resource.text)
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource link: {block.name} {block.uri}]")
    if structured is not None and not _wrapped_text(structured, result.content):
        parts.append(json.dumps(structured, ensure_ascii=False, default=str))
    return ToolOutput("\n".join(parts), error=result.is_error, files=files)


def _wrapped_text(structured: Any, content: list[Any]) -> bool:
    """Whether the structured value only wraps a text block, as SDK servers wrap a tool's
    plain return value: `{"result": "echo: hi"}` beside the text `echo: hi`."""
    if not isinstance(structured, dict) or list(structured) != ["result"]:
        return False
    value = structured["result"]
    texts = [block.text for block in content if isinstance(block, TextContent)]
    return any(text == value or _same_json(text, value) for text in texts)


def _same_json(text: str, value: Any) -> bool:
    try:
        return bool(json.loads(text) == value)
    except ValueError:
        return False


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return b""


def _extension(mime_type: str) -> str:
    subtype = mime_type.partition("/")[2].split(";")[0].strip()
    return {"jpeg": "jpg", "svg+xml": "svg"}.get(subtype, subtype or "bin")
