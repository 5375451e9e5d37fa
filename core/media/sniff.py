"""What a file really is, from its first bytes: a name or a declared type is only a claim.

Images are decoded by Pillow (`images.py`), PDFs opened by pypdf (`documents.py`); this
module only sorts bytes into the kinds the media path treats differently. The audio
signatures are the containers the transcription API takes (ogg/opus, mp3, m4a/mp4, wav,
webm, flac): a dozen fixed byte strings, not worth a dependency.
"""

from __future__ import annotations

IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
AUDIO_SIGNATURES = (
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\xff\xfb", "audio/mpeg"),
    (b"\xff\xf3", "audio/mpeg"),
    (b"\xff\xf2", "audio/mpeg"),
    (b"fLaC", "audio/flac"),
    (b"\x1a\x45\xdf\xa3", "audio/webm"),
)
AUDIO_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/flac": "flac",
    "audio/webm": "webm",
    "audio/wav": "wav",
    "audio/mp4": "m4a",
}


def image_type(data: bytes) -> str:
    """The image MIME type the bytes start with ('' when none)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for sig, mime in IMAGE_SIGNATURES if data.startswith(sig)), "")


def audio_type(data: bytes) -> str:
    """The audio container the bytes are in ('' when none the transcription API takes)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[4:8] == b"ftyp":  # MP4 family: m4a voice memos, Slack clips
        return "audio/mp4"
    return next((mime for sig, mime in AUDIO_SIGNATURES if data.startswith(sig)), "")


def is_pdf(data: bytes) -> bool:
    return data[:1024].lstrip().startswith(b"%PDF-")


def text_of(data: bytes) -> str | None:
    """The bytes as text when they are text (UTF-8, or UTF-16 with its mark), else None."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in data[:8192]:
        return None  # binary
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
