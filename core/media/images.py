"""Images as the model gets them: decoded (so an "image" that is not one is refused) and
scaled down to a bounded side, which bounds their tokens and the bytes kept for follow-ups."""

from __future__ import annotations

import io
import warnings

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a JPEG with more pictures in it (phone portraits, gain maps)
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
MAX_PIXELS = 24_000_000  # larger is refused unread: a 24 Mpx RGBA decode is ~100 MB
PASS_BYTES = 1_500_000  # a small, plain image is sent as it came; larger ones re-encoded


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
                if image.format in ("JPEG", "MPO"):
                    image.draft("RGB", (max_side, max_side))  # decode at a reduced scale
                image.load()  # decodes: a truncated or fake file fails here
                if _as_it_came(image, data, max_side):
                    return data, FORMATS[image.format]
                return _scaled(image, max_side)
    except (UnidentifiedImageError, OSError, PILImage.DecompressionBombError, SyntaxError) as exc:
        raise NotAnImage(type(exc).__name__) from None
    except (PILImage.DecompressionBombWarning, ValueError) as exc:
        if isinstance(exc, NotAnImage):
            raise
        raise NotAnImage(type(exc).__name__) from None


def _as_it_came(image: PILImage.Image, data: bytes, max_side: int) -> bool:
    """Small, plain and without metadata: re-encoding would only cost quality. Anything
    else is re-encoded, which also drops EXIF (a photo's location) and odd chunks."""
    return (
        len(data) <= PASS_BYTES
        and max(image.size) <= max_side
        and image.format in ("JPEG", "PNG", "WEBP")
        and image.mode in ("RGB", "RGBA", "L", "P")
        and "exif" not in image.info
    )


def _scaled(image: PILImage.Image, max_side: int) -> tuple[bytes, str]:
    image.thumbnail((max_side, max_side))  # first: the turn below works on the small one
    image = ImageOps.exif_transpose(image) or image
    alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    out = io.BytesIO()
    if alpha:
        image.convert("RGBA").save(out, "PNG", optimize=True)
        return out.getvalue(), "image/png"
    image.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue(), "image/jpeg"
