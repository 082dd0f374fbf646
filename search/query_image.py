"""An example picture to search by (``POST /api/search`` with ``image``, ``vidseek search --image``):
bytes -> RGB pixels, decoded by Pillow within limits, or refused with the reason.

Limits: at most ``VIDSEEK_MAX_IMAGE_BYTES`` of file, at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
(read when the picture is decoded, so lowering it takes effect at once; Pillow itself only warns
between once and twice that many, here they are refused too), JPEG, PNG or WebP only, and no more
elongated than :data:`MAX_ASPECT` (the picture is resized to a short side of the model's input size
before its centre is cropped, as video frames are: a 1 x 10,000 strip would grow to 22 million pixels).
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from search.query import QueryError

FORMATS = ("JPEG", "PNG", "WEBP")
MAX_ASPECT = 16  # long side / short side


class ImageRejected(QueryError):
    """An example picture that cannot be searched with; ``status`` is the HTTP status that says why
    (400: not a picture vidseek reads; 413: larger than the limits)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _size(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 20):g} MiB" if num_bytes >= 1 << 20 else f"{num_bytes} bytes"


def check_image_size(num_bytes: int, max_bytes: int) -> None:
    """Refuse a file of ``num_bytes`` over ``max_bytes`` (413) or empty (400) before reading it."""
    if num_bytes == 0:
        raise ImageRejected("image is empty")
    if num_bytes > max_bytes:
        raise ImageRejected(f"image is larger than the {_size(max_bytes)} limit (VIDSEEK_MAX_IMAGE_BYTES)", 413)


def _check_geometry(width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageRejected(f"image is {width}x{height} pixels, more than the {limit} allowed", 413)
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageRejected(f"image is {width}x{height} pixels: its sides may differ at most {MAX_ASPECT}-fold")


def _eight_bit(picture: Image.Image) -> Image.Image:
    """16-bit grey (PNG) scaled to 8 bits: Pillow's own conversion to RGB would clip it to white."""
    if not picture.mode.startswith("I"):
        return picture
    return Image.fromarray((np.asarray(picture).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")


def decode_image(data: bytes, max_bytes: int) -> np.ndarray:
    """A JPEG, PNG or WebP file's bytes -> its first frame as RGB ``[H, W, 3]`` uint8, turned upright
    as its EXIF orientation says (as viewers show a phone photo); transparency is dropped.

    Raises:
        ImageRejected: empty, too many bytes or pixels, too elongated, not one of those formats, or
            damaged (the message says which).
    """
    check_image_size(len(data), max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in words
            with Image.open(io.BytesIO(data), formats=FORMATS) as picture:
                _check_geometry(*picture.size)
                upright = ImageOps.exif_transpose(picture)
                return np.asarray(_eight_bit(upright).convert("RGB"))
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image has too many pixels ({exc})", 413) from None
    except UnidentifiedImageError:
        raise ImageRejected(f"image is not a picture vidseek reads ({', '.join(FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as exc:
        raise ImageRejected(f"image could not be decoded: {exc}") from None


def read_image(path: Path, max_bytes: int) -> np.ndarray:
    """:func:`decode_image` of the file at ``path``, whose size is checked before it is read.

    Raises:
        ImageRejected: as :func:`decode_image`, or ``path`` is not a file.
    """
    if not path.is_file():
        raise ImageRejected(f"{path} is not a file")
    check_image_size(path.stat().st_size, max_bytes)
    return decode_image(path.read_bytes(), max_bytes)
