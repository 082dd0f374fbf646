"""Decode videos with PyAV and sample frames at a fixed rate, streaming.

Frames are never collected for a whole video: :func:`iter_sampled_frames` yields one
resized RGB frame at a time, so memory stays bounded for a 10-hour file.

Sampling follows CLIP4Clip/TempMe preprocessing: frames at ``sample_fps`` (frame
``k`` at ``k / sample_fps`` seconds); when a video would give more than ``max_frames``
samples, ``max_frames`` of those instants are kept, uniformly spaced
(``np.linspace(0, n - 1, max_frames)``). Frames are resized so the short side is
``short_side`` (bicubic) and centre-cropped square by :func:`center_crop` for the model.

Decoding less (``VIDSEEK_DECODE=fast``, the default): when a sampling interval spans more than
a few source frames, non-reference frames and the deblocking filter are skipped, so a sample
may land a frame or so before its instant (:func:`iter_sampled_frames` says how far), and the
decoder seeks over the frames between a sample and the keyframe before the next one. Software
decoding runs on ``VIDSEEK_DECODE_WORKERS`` decoders side by side over keyframe spans when the
container allows (:mod:`indexer.parallel_decode`), with the same samples as one pass. Every
decoding attempt that fails -- hardware decoding without a usable CUDA decoder, fast decoding
that errs or yields nothing -- falls back to the next (:func:`decode_plans`), logged, ending
with exact software decoding, whose errors are the ones reported.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal, get_args

import av
import numpy as np
from av.codec.hwaccel import HWAccel

from indexer.containers import is_still_image_format, iso_bmff_incomplete
from indexer.keyframes import INSTANT_TOLERANCE, Keyframes, read_keyframes
from indexer.parallel_decode import DecodeSpan, plan_spans, run_spans
from search.media_paths import MediaRejected, is_regular_file

log = logging.getLogger(__name__)

# A video that decodes to less than this share of its advertised duration is truncated.
TRUNCATION_TOLERANCE = 0.9
DECODE_MODES = ("fast", "exact")
# Fast decoding pays off when a sampling interval spans more source frames than this.
FAST_MIN_FRAMES_PER_SAMPLE = 4
# Fast decoding seeks to the keyframe before the next sample when that skips more source frames than this.
JUMP_MIN_FRAMES = 4
SPAN_QUEUE_DEPTH = 16  # decoded samples a span may run ahead of the consumer (~4 MiB at 224 px)


# Why a file could not be decoded, as counted by the vidseek_ingest_decode_errors metric (a fixed set:
# a label value per kind).
DecodeErrorKind = Literal["missing", "empty", "not_a_container", "truncated", "image", "no_video_stream",
                          "no_picture_size", "corrupt", "no_frames"]
DECODE_ERROR_KINDS: tuple[DecodeErrorKind, ...] = get_args(DecodeErrorKind)


class DecodeError(MediaRejected):
    """The file is not a decodable video; the message says why in words a user understands (no
    server paths, no FFmpeg error numbers); ``kind`` says it in one of :data:`DECODE_ERROR_KINDS`;
    ``detail`` keeps FFmpeg's own words for operators' logs."""

    def __init__(self, message: str, *, kind: DecodeErrorKind, detail: str | None = None):
        if kind not in DECODE_ERROR_KINDS:
            raise ValueError(f"unknown decode error kind {kind!r}")
        super().__init__(message)
        self.kind, self.detail = kind, detail


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
        raise DecodeError(f"{path.name} does not exist or is not a file", kind="missing")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path.name} is empty (0 bytes)", kind="empty")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if iso_bmff_incomplete(path):
            raise DecodeError(f"{path.name} is truncated or incomplete: its index (moov box) is missing or cut off",
                              kind="truncated", detail=str(exc)) from exc
        raise DecodeError(f"{path.name} is not a readable video container", kind="not_a_container",
                          detail=str(exc)) from exc
    if is_still_image_format(container.format.name):
        container.close()
        raise DecodeError(f"{path.name} is an image, not a video ({container.format.name})", kind="image")
    return container


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"{name} has no video stream (streams: {', '.join(kinds)})", kind="no_video_stream")
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
        raise DecodeError(f"{path.name} has a video stream with no picture size", kind="no_picture_size")
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


def resize_rgb(image: np.ndarray, short_side: int) -> np.ndarray:
    """A still RGB image ``[H, W, 3]`` uint8 -> ``[H', W', 3]`` with its short side ``short_side``
    (:func:`resized_size`), by the scaler sampled frames go through (FFmpeg's bicubic swscale,
    :func:`_to_rgb`), so a picture is prepared for the model as a video frame is."""
    height, width = image.shape[:2]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return _to_rgb(frame, *resized_size(width, height, short_side))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3]`` -> ``[size, size, 3]`` centre crop (H, W >= size)."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


@dataclass(frozen=True)
class DecodePlan:
    """How one decoding attempt runs: ``skip`` non-reference frames and deblocking, ``hardware``
    decoding on the CUDA device (NVDEC, through FFmpeg's hwaccel), ``workers`` software decoders
    side by side over spans of the file (:mod:`indexer.parallel_decode`; 1: one pass)."""

    skip: bool = False
    hardware: bool = False
    workers: int = 1

    @property
    def jumps(self) -> bool:
        """Whether this attempt seeks over the frames no sample needs (fast software decoding,
        :meth:`~indexer.keyframes.Keyframes.jump_target`)."""
        return self.skip and not self.hardware

    def describe(self) -> str:
        where = "hardware" if self.hardware else "software"
        spread = f" on {self.workers} decoders" if self.workers > 1 else ""
        return f"{where} {'fast' if self.skip else 'exact'} decoding{spread}"


def decode_plans(info: VideoInfo, sample_fps: float, mode: str = "exact", hardware: bool = False,
                 workers: int = 1) -> list[DecodePlan]:
    """The attempts to make, in order; each falls back to the next (logged) when it fails.

    ``mode="fast"`` skips frames only when the sampling interval spans more than
    :data:`FAST_MIN_FRAMES_PER_SAMPLE` source frames (otherwise most frames are samples anyway);
    a file without a frame rate is decoded exactly. Software decoding first runs on ``workers``
    decoders when more than 1, then in one pass. The last attempt is always software exact
    decoding in one pass, whose errors are the ones reported, so a bad file fails with the same
    message in every mode.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    if workers < 1:
        raise ValueError(f"decode workers must be >= 1, got {workers}")
    skip = mode == "fast" and info.fps > 0 and info.fps / sample_fps > FAST_MIN_FRAMES_PER_SAMPLE
    plans = [DecodePlan(skip, hardware=True)] if hardware else []
    plans += [DecodePlan(skip, workers=workers), DecodePlan(skip), DecodePlan()]
    return list(dict.fromkeys(plans))


@dataclass
class DecodeStats:
    """What decoding one video cost, summed over its attempts and decoders: ``frames`` decoded (the
    frames FFmpeg returned; skipped non-reference frames are not counted) and ``seeks`` made."""

    frames: int = 0
    seeks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, frames: int, seeks: int) -> None:
        with self._lock:  # span decoders add from their own threads
            self.frames += frames
            self.seeks += seeks


class _AttemptUnusable(Exception):
    """This attempt cannot decode the file (no CUDA decoder, or frames fast decoding cannot time)."""


@dataclass
class _Cursor:
    """Progress of sampling over all attempts: the next instant to serve, samples yielded, and
    the time of the last one (an attempt resumed after a fallback never yields it again)."""

    next_sample: int = 0
    emitted: int = 0
    last_yielded: float = -math.inf


def iter_sampled_frames(
    path: Path,
    sample_fps: float = 1.0,
    max_frames: int = 3600,
    short_side: int = 224,
    info: VideoInfo | None = None,
    mode: str = "exact",
    hardware: bool = False,
    workers: int = 1,
    stats: DecodeStats | None = None,
) -> Iterator[SampledFrame]:
    """Decode ``path`` once, front to back, yielding the frame shown at each sample instant.

    Each instant gets the last decoded frame whose presentation time is at or before it, with
    that frame's own timestamp. When several instants fall on one frame (a video slower than
    ``sample_fps``) the frame is yielded once.

    ``mode="exact"`` decodes every frame, so a sample is the frame on screen at its instant.
    ``mode="fast"`` -- when the sampling interval spans more than
    :data:`FAST_MIN_FRAMES_PER_SAMPLE` source frames -- does not decode non-reference frames
    (``skip_frame=NONREF``: the B-frames nothing is predicted from) and skips the in-loop
    deblocking filter (the frames are downscaled to ``short_side`` anyway). A sample then lands
    on the last *reference* frame at or before its instant: at most the longest run of
    consecutive non-reference frames before it, i.e. 1 source frame period for x264's default
    pyramid B-frames, 2 for MPEG-2's IBBP, ``bframes`` for H.264 without a B-pyramid (3 for
    x264 presets without one) -- never after the instant. In containers that seek by an index
    (:mod:`indexer.keyframes`), fast decoding also jumps over the frames no sample needs: once a
    sample is served, when the last keyframe at or before the next instant lies more than
    :data:`JUMP_MIN_FRAMES` source frames ahead, it seeks there (the frames between cannot be on
    screen at any later instant, nor be needed to decode one) -- the samples are the same, fewer
    frames are decoded when keyframes are closer together than a few sampling intervals. Files
    whose frames fast decoding cannot time, whose seeks land late, or that fail or give no frames
    with it, are decoded again exactly (logged), resuming after the samples already yielded.

    ``workers > 1`` decodes spans of the file that start at keyframes on that many decoders side
    by side (:mod:`indexer.parallel_decode`): the samples are the same as in one pass.

    ``hardware=True`` (a CUDA worker) first tries NVDEC through FFmpeg's CUDA hwaccel, and falls
    back to software decoding with a log line when the build, the driver or the codec refuse (any
    error of a hardware attempt falls back; a software attempt falls back on decoding errors only).

    ``stats``, when given, counts the frames decoded and the seeks made.

    Raises:
        DecodeError: the file cannot be decoded, decodes to no frames, or is truncated
            (decoding stops well before the advertised duration). The message is the exact
            software decoder's whatever the mode.
    """
    info = info or probe(path)
    times = sample_times(info.duration, sample_fps, max_frames)
    size = resized_size(info.width, info.height, short_side)
    cursor = _Cursor()
    plans = decode_plans(info, sample_fps, mode, hardware, workers)
    for attempt, plan in enumerate(plans):
        try:
            if plan.workers > 1:
                yield from _decode_in_spans(path, info, times, size, plan, cursor, stats)
            else:
                jumps = read_keyframes(path) if plan.jumps else None
                yield from _decode_samples(path, info, times, size, plan, cursor, stats, jumps)
            return
        except Exception as exc:  # noqa: BLE001 -- which ones fall back is decided here
            retryable = isinstance(exc, (DecodeError, _AttemptUnusable, av.error.FFmpegError)) or plan.hardware
            if attempt == len(plans) - 1 or not retryable:
                raise
            log.warning(
                "%s of %s failed (%s); falling back to %s", plan.describe(), path.name, exc, plans[attempt + 1].describe()
            )


def _decode_in_spans(
    path: Path, info: VideoInfo, times: np.ndarray, size: tuple[int, int], plan: DecodePlan, cursor: _Cursor,
    stats: DecodeStats | None,
) -> Iterator[SampledFrame]:
    """Software decoding on ``plan.workers`` decoders over spans cut at keyframes, the samples renumbered
    in order; a file that cannot be cut (no index to seek by, too few keyframes) is decoded in one pass."""
    found = read_keyframes(path)
    spans = plan_spans(times, found) if found is not None else []
    if len(spans) < 2:
        yield from _decode_samples(path, info, times, size, replace(plan, workers=1), cursor, stats, found)
        return

    def decode_span(span: DecodeSpan) -> Iterator[SampledFrame]:
        return _decode_samples(path, info, times[span.first:span.stop], size, plan, _Cursor(), stats, found, span)

    for sample in run_spans(spans, decode_span, plan.workers, SPAN_QUEUE_DEPTH, f"vidseek-span-{path.name}"):
        if sample.time > cursor.last_yielded:
            yield replace(sample, index=cursor.emitted)
            cursor.emitted += 1
            cursor.last_yielded = sample.time


def _open_decoder(path: Path, plan: DecodePlan) -> av.container.InputContainer:
    """The container, its first video stream's decoder set up for ``plan``."""
    if not plan.hardware:
        return _open(path)
    try:
        return av.open(str(path), metadata_errors="ignore", hwaccel=HWAccel("cuda", allow_software_fallback=False))
    except (av.error.FFmpegError, ValueError) as exc:
        raise _AttemptUnusable(f"no CUDA decoder: {exc}") from exc


def _decode_samples(
    path: Path, info: VideoInfo, times: np.ndarray, size: tuple[int, int], plan: DecodePlan, cursor: _Cursor,
    stats: DecodeStats | None = None, jumps: Keyframes | None = None, span: DecodeSpan | None = None,
) -> Iterator[SampledFrame]:
    """One decoding attempt under ``plan``, serving the instants from ``cursor.next_sample`` on; with
    ``span``, only from its keyframe on (seeking there), and its ``times`` only. A fast software attempt
    given the file's keyframes (``jumps``) seeks over the frames no sample needs (:meth:`Keyframes.jump_target`)."""
    out_w, out_h = size
    last_time = -1.0
    pending = None  # (time, frame): latest decoded frame not past the next instant
    seek_to = span.keyframe_pts if span is not None else None
    jumps = jumps if plan.jumps else None
    min_skip = JUMP_MIN_FRAMES / info.fps if info.fps else math.inf
    decoded = seeks = 0
    with _open_decoder(path, plan) as container:
        stream = _video_stream(container, path.name)
        if span is None:
            stream.thread_type = "AUTO"
        else:  # one of several decoders running side by side: one thread each
            stream.codec_context.thread_count = 1
        if plan.skip:
            stream.codec_context.options = {"skip_frame": "noref", "skip_loop_filter": "all"}
        default_step = Fraction(1, 25) if not info.fps else Fraction(1 / info.fps).limit_denominator(1000)
        try:
            while True:
                landing = seek_to is not None
                if landing:  # after setting the decoder up: seeking opens it
                    container.seek(seek_to, stream=stream, backward=True)
                    seeks += 1
                seek_to = None
                for frame in container.decode(stream):
                    decoded += 1
                    if frame.time is None and (plan.skip or span is not None):
                        raise _AttemptUnusable("frames without timestamps")
                    if landing and frame.time > times[cursor.next_sample] + INSTANT_TOLERANCE:  # the seek landed late
                        raise _AttemptUnusable(
                            f"seeking for {times[cursor.next_sample]:.3f}s landed on a frame at {frame.time:.3f}s")
                    landing = False
                    t = frame.time if frame.time is not None else (last_time + float(default_step))
                    last_time = max(last_time, t)
                    passed = False
                    while cursor.next_sample < len(times) and t > times[cursor.next_sample] + INSTANT_TOLERANCE:
                        # the frame on screen at times[next_sample] is the pending one (or this one if none)
                        source_time, source = pending if pending is not None else (t, frame)
                        if source_time > cursor.last_yielded:
                            yield _sample(cursor, source_time, source, out_w, out_h)
                        skip_to = np.searchsorted(times, t, side="left")
                        cursor.next_sample = max(cursor.next_sample + 1, int(skip_to))
                        pending, passed = None, True
                    if cursor.next_sample >= len(times):
                        break
                    pending = (t, frame)
                    if passed and jumps is not None:
                        seek_to = jumps.jump_target(t, float(times[cursor.next_sample]), min_skip)
                        if seek_to is not None:
                            break
                if seek_to is None:
                    break
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{path.name} is corrupt: decoding failed at {max(last_time, 0):.1f}s",
                              kind="corrupt", detail=str(exc)) from exc
        finally:
            if stats is not None:
                stats.add(decoded, seeks)
    if span is not None and not span.last:
        if cursor.next_sample < len(times):  # the stream ended before the next span's keyframe
            raise _AttemptUnusable(f"frames stop at {last_time:.1f}s, before the span's instants end")
        return
    if cursor.next_sample < len(times) and pending is not None and pending[0] > cursor.last_yielded:
        yield _sample(cursor, pending[0], pending[1], out_w, out_h)
    if cursor.emitted == 0:
        raise DecodeError(f"{path.name} contains no decodable video frames", kind="no_frames")
    frame_period = 1.0 / info.fps if info.fps else 0.04
    if last_time + frame_period < TRUNCATION_TOLERANCE * info.duration - 1.0:
        raise DecodeError(
            f"{path.name} is truncated: frames stop at {last_time:.1f}s of an advertised {info.duration:.1f}s",
            kind="truncated",
        )


def _sample(cursor: _Cursor, time: float, frame: av.VideoFrame, width: int, height: int) -> SampledFrame:
    sample = SampledFrame(cursor.emitted, max(time, 0.0), _to_rgb(frame, width, height))
    cursor.emitted += 1
    cursor.last_yielded = time
    return sample


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()
