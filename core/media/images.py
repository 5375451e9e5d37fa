"""Images as the model gets them: decoded (so an "image" that is not one is refused) and
scaled down to a bounded side, which bounds their tokens and the bytes kept for follow-ups."""

from __future__ import annotations

import io
import warnings

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_PIXELS = 50_000_000  # larger is refused unread (a decompression bomb, or no photo)


class NotAnImage(ValueError):
    """The bytes are not an image the model takes (JPEG, PNG, GIF, WebP)."""


def prepare_image(data: bytes, max_side: int) -> tuple[bytes, str]:
    """(bytes, MIME type) to send: the image as it is when small enough, else scaled so its
    longest side is `max_side`, re-encoded as JPEG (PNG when it has transparency). CPU
    work: callers run it in a thread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                if image.format not in FORMATS:
                    raise NotAnImage(f"an image in {image.format} format")
                if image.width * image.height > MAX_PIXELS:
                    raise NotAnImage("an image too large to read")
                image.load()  # decodes: a truncated or fake file fails here
                if max(image.size) <= max_side and image.format != "GIF":
                    return data, FORMATS[image.format]
                return _scaled(image, max_side)
    except (UnidentifiedImageError, OSError, PILImage.DecompressionBombError, SyntaxError) as exc:
        raise NotAnImage(type(exc).__name__) from None
    except (PILImage.DecompressionBombWarning, ValueError) as exc:
        if isinstance(exc, NotAnImage):
            raise
        raise NotAnImage(type(exc).__name__) from None


def _scaled(image: PILImage.Image, max_side: int) -> tuple[bytes, str]:
    image = ImageOps.exif_transpose(image) or image
    image.thumbnail((max_side, max_side))
    alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    out = io.BytesIO()
    if alpha:
        image.convert("RGBA").save(out, "PNG", optimize=True)
        return out.getvalue(), "image/png"
    image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue(), "image/jpeg"
