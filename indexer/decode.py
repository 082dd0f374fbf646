"""Decode videos with PyAV and sample frames at a fixed rate, streaming.

Frames are never collected for a whole video: :func:`iter_sampled_frames` yields one
resized RGB frame at a time, so memory stays bounded for a 10-hour file.

Sampling follows CLIP4Clip/TempMe preprocessing: frames at ``sample_fps`` (frame
``k`` at ``k / sample_fps`` seconds); when a video would give more than ``max_frames``
samples, ``max_frames`` of those instants are kept, uniformly spaced
(``np.linspace(0, n - 1, max_frames)``). Frames are resized so the short side is
``short_side`` (bicubic) and centre-cropped square by :func:`center_crop` for the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from indexer.containers import is_still_image_format, iso_bmff_incomplete
from search.media_paths import MediaRejected, is_regular_file

# A video that decodes to less than this share of its advertised duration is truncated.
TRUNCATION_TOLERANCE = 0.9


class DecodeError(MediaRejected):
    """The file is not a decodable video; the message says why in words a user understands (no
    server paths, no FFmpeg error numbers); ``detail`` keeps FFmpeg's own words for operators' logs."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    """Container facts read without decoding. ``fps`` is 0.0 when the file does not say."""

    duration: float
    fps: float
    width: int
    height: int
    codec: str


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: ``image`` is ``[H, W, 3]`` uint8 RGB with ``min(H, W) == short_side``."""

    index: int
    time: float
    image: np.ndarray


def _open(path: Path) -> av.container.InputContainer:
    if not is_regular_file(path):
        raise DecodeError(f"{path.name} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path.name} is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if iso_bmff_incomplete(path):
            raise DecodeError(f"{path.name} is truncated or incomplete: its index (moov box) is missing or cut off",
                              detail=str(exc)) from exc
        raise DecodeError(f"{path.name} is not a readable video container", detail=str(exc)) from exc
    if is_still_image_format(container.format.name):
        container.close()
        raise DecodeError(f"{path.name} is an image, not a video ({container.format.name})")
    return container


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"{name} has no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _stream_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _demuxed_duration(path: Path) -> float:
    """Duration from the last packet timestamp, for containers that do not state one (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = 0.0
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                last = max(last, end)
        return last


def probe(path: Path) -> VideoInfo:
    """Read a video's duration, frame rate and size from its container headers.

    Raises:
        DecodeError: missing, empty, not a media container, or without a video stream.
    """
    with _open(path) as container:
        stream = _video_stream(container, path.name)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        duration = _stream_duration(container, stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
    if duration is None or duration <= 0:
        duration = _demuxed_duration(path)
    if not width or not height:
        raise DecodeError(f"{path.name} has a video stream with no picture size")
    return VideoInfo(duration=duration, fps=fps, width=width, height=height, codec=codec)


def sample_times(duration: float, sample_fps: float, max_frames: int) -> np.ndarray:
    """Instants (seconds) to sample: ``k / sample_fps`` for every ``k`` inside ``duration``,
    uniformly sub-sampled to ``max_frames`` when there are more. Returns float64 ``[n]``, n >= 1."""
    count = max(1, math.ceil(duration * sample_fps - 1e-9))
    times = np.arange(count, dtype=np.float64) / sample_fps
    if count > max_frames:
        times = times[np.linspace(0, count - 1, max_frames).round().astype(np.int64)]
    return times


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the short side is ``short_side``, aspect kept."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3]`` -> ``[size, size, 3]`` centre crop (H, W >= size)."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def iter_sampled_frames(
    path: Path,
    sample_fps: float = 1.0,
    max_frames: int = 3600,
    short_side: int = 224,
    info: VideoInfo | None = None,
) -> Iterator[SampledFrame]:
    """Decode ``path`` once, front to back, yielding the frame shown at each sample instant.

    Each instant gets the last frame whose presentation time is at or before it (the frame
    on screen then). When several instants fall on one frame (a video slower than
    ``sample_fps``) the frame is yielded once.

    Raises:
        DecodeError: the file cannot be decoded, decodes to no frames, or is truncated
            (decoding stops well before the advertised duration).
    """
    info = info or probe(path)
    times = sample_times(info.duration, sample_fps, max_frames)
    out_w, out_h = resized_size(info.width, info.height, short_side)
    next_sample = 0
    emitted = 0
    last_time = -1.0
    pending = None  # (time, frame): latest decoded frame not past the next instant
    with _open(path) as container:
        stream = _video_stream(container, path.name)
        stream.thread_type = "AUTO"
        default_step = Fraction(1, 25) if not info.fps else Fraction(1 / info.fps).limit_denominator(1000)
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (last_time + float(default_step))
                last_time = max(last_time, t)
                while next_sample < len(times) and t > times[next_sample] + 1e-6:
                    # the frame on screen at times[next_sample] is the pending one (or this one if none)
                    source_time, source = pending if pending is not None else (t, frame)
                    yield SampledFrame(emitted, max(source_time, 0.0), _to_rgb(source, out_w, out_h))
                    emitted += 1
                    skip_to = np.searchsorted(times, t, side="left")
                    next_sample = max(next_sample + 1, int(skip_to))
                    pending = None
                if next_sample >= len(times):
                    break
                pending = (t, frame)
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{path.name} is corrupt: decoding failed at {max(last_time, 0):.1f}s",
                              detail=str(exc)) from exc
    if next_sample < len(times) and pending is not None:
        yield SampledFrame(emitted, max(pending[0], 0.0), _to_rgb(pending[1], out_w, out_h))
        emitted += 1
    if emitted == 0:
        raise DecodeError(f"{path.name} contains no decodable video frames")
    frame_period = 1.0 / info.fps if info.fps else 0.04
    if last_time + frame_period < TRUNCATION_TOLERANCE * info.duration - 1.0:
        raise DecodeError(
            f"{path.name} is truncated: frames stop at {last_time:.1f}s of an advertised {info.duration:.1f}s"
        )


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()
