"""A document's text: PDFs through pypdf (pure Python), text files as they are."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from core.media.sniff import is_pdf, text_of

logging.getLogger("pypdf").setLevel(logging.ERROR)  # a warning per odd PDF is noise


class Unreadable(ValueError):
    """Not a document the bot reads (the reason is safe to show)."""


@dataclass(frozen=True, slots=True)
class DocumentText:
    text: str
    pages: int = 0  # PDFs: pages in the file
    read_pages: int = 0  # PDFs: pages read (`media.max_pages`)


def read_document(data: bytes, max_pages: int) -> DocumentText:
    """The text of a PDF or a text file. CPU work: callers run it in a thread."""
    if is_pdf(data):
        return _pdf(data, max_pages)
    text = text_of(data)
    if text is None:
        raise Unreadable("it is not a text file or a PDF")
    return DocumentText(text.strip())


def _pdf(data: bytes, max_pages: int) -> DocumentText:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("the PDF is password-protected")
        pages = len(reader.pages)
        read = min(pages, max_pages)
        texts = [(reader.pages[i].extract_text() or "").strip() for i in range(read)]
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise Unreadable(f"the PDF could not be read ({type(exc).__name__})") from None
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise Unreadable("the PDF has no text I can read (a scan? send its pages as images)")
    return DocumentText(text, pages, read)
