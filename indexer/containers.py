"""What a file that FFmpeg opened (or could not) really is, in words a user understands.

- FFmpeg's image demuxers (``image2``, ``jpeg_pipe``, ``png_pipe``, ...) open a still image as a
  one-frame "video"; vidseek refuses them (:func:`is_still_image_format`).
- An MP4/MOV file (ISO base media) whose index (``moov`` box) was never written or got cut off --
  an interrupted download or recording -- makes FFmpeg say only "Invalid data found when
  processing input"; :func:`iso_bmff_incomplete` recognises it from the top-level boxes.
"""

from __future__ import annotations

import struct
from pathlib import Path

# Demuxer names as FFmpeg reports them (``container.format.name``, comma-separated aliases).
_STILL_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})


def is_still_image_format(format_name: str) -> bool:
    """True for FFmpeg's still-image demuxers: ``image2``/``image2pipe`` and the ``<codec>_pipe``
    family (``jpeg_pipe``, ``png_pipe``, ``webp_pipe``, ...), all of which are image readers."""
    return any(name in _STILL_IMAGE_DEMUXERS or name.endswith("_pipe") for name in format_name.split(","))


# Top-level box types of ISO base media files (MP4, MOV, 3GP, M4V).
_ISO_TOP_LEVEL = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"moof",
                            b"mfra", b"pdin", b"styp", b"sidx", b"pnot", b"prfl"})


def iso_bmff_incomplete(path: Path) -> bool:
    """True when ``path`` starts like an MP4/MOV file but is cut short: a top-level box runs past
    the end of the file, or the file ends before any index (``moov``) box. Reads box headers only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            offset, first, has_index = 0, True, False
            while offset + 8 <= size:
                fh.seek(offset)
                header = fh.read(16)
                length, kind = struct.unpack(">I4s", header[:8])
                if first and kind not in (b"ftyp", b"wide", b"free", b"mdat", b"moov", b"pnot", b"skip"):
                    return False  # not an ISO base media file
                if kind not in _ISO_TOP_LEVEL:
                    return False  # some other format; not ours to judge
                first = False
                if length == 1 and len(header) == 16:
                    length = struct.unpack(">Q", header[8:16])[0]
                elif length == 0:  # the box runs to the end of the file
                    length = size - offset
                if length < 8:
                    return False
                has_index = has_index or kind == b"moov"
                if offset + length > size:
                    return True
                offset += length
            return not first and not has_index
    except OSError:
        return False
