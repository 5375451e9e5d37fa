"""What the core makes of a file from the platform's description of it (type, name), the
same rule on every platform; the bytes are checked later (`core/media/reader.py`)."""

from __future__ import annotations

from pathlib import PurePosixPath

from core.model import MediaKind

DOCUMENT_TYPES = frozenset({
    "application/pdf", "application/json", "application/xml", "application/csv",
    "application/yaml", "application/x-yaml", "application/toml", "application/sql",
    "application/javascript", "application/x-javascript", "application/typescript",
    "application/x-sh", "application/x-python", "application/x-python-code",
    "application/x-httpd-php", "application/x-ndjson", "application/rtf",
})  # fmt: skip
# Read by the name when the platform says only "some bytes" (application/octet-stream)
DOCUMENT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini",
    ".cfg", ".xml", ".html", ".css", ".sql", ".log", ".py", ".js", ".mjs", ".ts", ".tsx",
    ".jsx", ".go", ".rs", ".java", ".kt", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".rb",
    ".php", ".swift", ".sh", ".bash", ".zsh", ".ps1", ".lua", ".r", ".scala", ".pl", ".hs",
    ".ex", ".exs", ".erl", ".clj", ".dart", ".vue", ".svelte", ".tex", ".pdf",
})  # fmt: skip


def kind_of(mime_type: str, name: str = "") -> MediaKind:
    """image/* and audio/* by their type; text, PDF, JSON, CSV and source code as documents
    (by the file's suffix when the type says nothing); anything else OTHER."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime.startswith("image/"):
        return MediaKind.IMAGE
    if mime.startswith("audio/"):
        return MediaKind.AUDIO
    if mime.startswith("text/") or mime in DOCUMENT_TYPES or mime.endswith(("+json", "+xml")):
        return MediaKind.DOCUMENT
    unnamed = mime in ("", "application/octet-stream")
    if unnamed and PurePosixPath(name.lower()).suffix in DOCUMENT_SUFFIXES:
        return MediaKind.DOCUMENT
    return MediaKind.OTHER
