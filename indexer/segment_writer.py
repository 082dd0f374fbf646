"""The segment writer: thumbnails on disk and one catalog record per encoded segment.

A segment ends where the next one starts (the last at the video's end), so each record is
built once, when its successor -- or the end of the video -- is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.segments import EncodedSegment
from search.catalog import SegmentRecord

THUMBNAIL_HEIGHT = 180
THUMBNAIL_MAX_ASPECT = 3  # width:height or height:width kept at most in a thumbnail


def thumbnail_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) box of a ``width`` x ``height`` frame whose aspect ratio is
    at most ``THUMBNAIL_MAX_ASPECT`` either way: a very tall or wide video (16x4000) keeps a readable middle
    instead of shrinking to a 1-pixel strip; the page letterboxes what remains."""
    w = min(width, round(height * THUMBNAIL_MAX_ASPECT))
    h = min(height, round(width * THUMBNAIL_MAX_ASPECT))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def save_thumbnail(image: np.ndarray, path: Path) -> None:
    """JPEG of an RGB ``[H, W, 3]`` frame, its middle cropped to an aspect ratio of at most
    ``THUMBNAIL_MAX_ASPECT`` (:func:`thumbnail_crop`), scaled to fit ``4*THUMBNAIL_HEIGHT`` x ``THUMBNAIL_HEIGHT`` px,
    written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb = Image.fromarray(image)
    thumb = thumb.crop(thumbnail_crop(thumb.width, thumb.height))
    thumb.thumbnail((THUMBNAIL_HEIGHT * 4, THUMBNAIL_HEIGHT))
    tmp = path.with_suffix(".tmp")
    thumb.save(tmp, format="JPEG", quality=82)
    tmp.replace(path)


class SegmentWriter:
    """Writes each segment's thumbnail (its middle frame) under ``thumbnail_dir`` and collects
    :class:`SegmentRecord` rows for the catalog. ``frames_sampled`` counts the sampled frames
    the segments stand for, ``frames_encoded`` the frames the ViT saw."""

    def __init__(self, thumbnail_dir: Path, content_hash: str, duration: float):
        self.thumbnail_dir, self.content_hash, self.duration = thumbnail_dir, content_hash, duration
        self.records: list[SegmentRecord] = []
        self.frames_sampled = 0
        self.frames_encoded = 0
        self._open: tuple[EncodedSegment, str] | None = None  # the last segment, its end not known yet

    def add(self, segments: Iterable[EncodedSegment]) -> None:
        for segment in segments:
            group = segment.group
            thumb = f"{self.content_hash[:2]}/{self.content_hash}/{group.ordinal:05d}.jpg"
            save_thumbnail(group.middle.image, self.thumbnail_dir / thumb)
            self._close(group.frames[0].time)
            self._open = (segment, thumb)
            self.frames_sampled += sum(group.weights)
            self.frames_encoded += len(group.frames)

    def finish(self) -> list[SegmentRecord]:
        """The records, the last one ending at the video's end (or at its start, if later)."""
        if self._open is not None:
            self._close(max(self.duration, self._open[0].group.frames[0].time))
        return self.records

    def _close(self, end: float) -> None:
        if self._open is not None:
            segment, thumb = self._open
            group = segment.group
            self.records.append(
                SegmentRecord(group.ordinal, group.frames[0].time, end, len(group.frames), thumb, segment.embedding)
            )
            self._open = None
