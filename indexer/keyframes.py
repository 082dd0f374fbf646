"""Keyframes of a video's first stream, read by demuxing, and where decoding may jump to one.

A keyframe starts a stretch that decodes on its own, so a decoder seeking there gives exactly the
frames it would give reading from the start. Two uses: several decoders side by side each start at
one (:mod:`indexer.parallel_decode`), and fast decoding jumps over the frames between a sample and
the keyframe before the next sample, which no sample shows (:meth:`Keyframes.jump_target`). Only
containers that seek exactly by an index (MP4/MOV, Matroska/WebM) are read; for others seeking may
land elsewhere, and decoding stays a single pass front to back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# Containers whose seeks land on the keyframe asked for (they index their packets).
INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm")
# Sample instants and frame times are compared within this (seconds), as in indexer.decode.
INSTANT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Keyframes:
    """The keyframe packets of a video stream, in order.

    Attributes:
        pts: int64 ``[K]`` presentation times in the stream's time base, ascending, distinct.
        seconds: float64 ``[K]`` the same in seconds.
    """

    pts: np.ndarray
    seconds: np.ndarray

    def jump_target(self, position: float, instant: float, min_skip: float) -> int | None:
        """Where a decoder showing the frame at ``position`` seconds should seek to serve ``instant``.

        The frame on screen at ``instant`` is decoded from the last keyframe at or before it, so the
        frames between ``position`` and that keyframe are needed by no later sample. Returns that
        keyframe's pts when it lies more than ``min_skip`` seconds after ``position`` (a seek costs a
        decoder flush: short jumps are not worth it), else None (keep decoding)."""
        k = int(np.searchsorted(self.seconds, instant + INSTANT_TOLERANCE, side="right")) - 1
        if k < 0 or self.seconds[k] <= position + min_skip:
            return None
        return int(self.pts[k])


def read_keyframes(path: Path) -> Keyframes | None:
    """The first video stream's keyframes, read by demuxing (no decoding); None when the container
    does not seek by an index or the stream has no time base."""
    with av.open(str(path), metadata_errors="ignore") as container:
        if not any(name in INDEXED_FORMATS for name in container.format.name.split(",")):
            return None
        stream = container.streams.video[0]
        time_base = stream.time_base  # read while the container is open
        if time_base is None:
            return None
        pts = [p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    ordered = np.unique(np.asarray(pts, np.int64))
    return Keyframes(ordered, ordered * float(time_base))
