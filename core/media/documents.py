"""A document's text: PDFs through pypdf (pure Python), text files as they are."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

from pypdf import Configuration, PdfReader, apply_configuration

from core.media.sniff import is_pdf, text_of

logging.getLogger("pypdf").setLevel(logging.ERROR)  # a warning per odd PDF is noise
# A stream may inflate to 10 MB at most (pypdf's defaults are 75 MB): a few kB of PDF can
# otherwise become minutes of text extraction.
STREAM_LIMIT = 10_000_000
LIMITS = Configuration(
    maximum_declared_stream_length=STREAM_LIMIT,
    array_based_stream_maximum_output_length=STREAM_LIMIT,
    jbig2_maximum_output_length=STREAM_LIMIT,
    lzw_maximum_output_length=STREAM_LIMIT,
    run_length_maximum_output_length=STREAM_LIMIT,
    zlib_maximum_output_length=STREAM_LIMIT,
)
PDF_SECONDS = 20.0  # pages are read until this much time has gone; the rest is left out


class Unreadable(ValueError):
    """Not a document the bot reads (the reason is safe to show)."""


@dataclass(frozen=True, slots=True)
class DocumentText:
    text: str
    pages: int = 0  # PDFs: pages in the file
    read_pages: int = 0  # PDFs: pages read (`media.max_pages`)


def read_document(data: bytes, max_pages: int, max_chars: int = 10**9) -> DocumentText:
    """The text of a PDF or a text file, reading stops past `max_chars`. CPU work: callers
    run it in a thread."""
    if is_pdf(data):
        return _pdf(data, max_pages, max_chars)
    text = text_of(data)
    if text is None:
        raise Unreadable("it is not a text file or a PDF")
    return DocumentText(text.strip())


def _pdf(data: bytes, max_pages: int, max_chars: int) -> DocumentText:
    try:
        with apply_configuration(LIMITS):
            return _pdf_text(data, max_pages, max_chars)
    except Unreadable:
        raise
    except Exception as exc:  # pypdf raises many kinds on odd files; none may lose a message
        raise Unreadable(f"the PDF could not be read ({type(exc).__name__})") from None


def _pdf_text(data: bytes, max_pages: int, max_chars: int) -> DocumentText:
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise Unreadable("the PDF is password-protected")
    pages = len(reader.pages)
    deadline = time.monotonic() + PDF_SECONDS
    texts: list[str] = []
    for page in reader.pages[:max_pages]:
        texts.append((page.extract_text() or "").strip())
        if sum(map(len, texts)) > max_chars or time.monotonic() > deadline:
            break  # enough for the budget, or too slow: the note says pages 1-n
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise Unreadable("the PDF has no text I can read (a scan? send its pages as images)")
    return DocumentText(text, pages, len(texts))
