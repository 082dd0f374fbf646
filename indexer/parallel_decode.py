"""Decode one video with several decoders side by side, each over a span that starts at a keyframe.

FFmpeg's own threads do little for sparse sampling on a small machine: decoding a.mp4 (1080p
H.264) with non-reference frames skipped took 0.196 s on one frame thread and 0.165 s on two
(1.19x; slice threads: none), and ``thread_type=AUTO`` as ingestion used it ran at one thread's
speed. Independent decoders scale with cores instead (PyAV releases the GIL while decoding: two
threads each decoding the whole of a.mp4 took 1.07x the time of one): the sampled instants are cut
into :class:`~indexer.decode.DecodeSpan` s at keyframes, and each span is decoded on its own thread
from its keyframe.

Samples stay exactly those of one decoder front to back: a span's first instant is at or after its
keyframe, so the frame shown at it is decoded from that keyframe on, as it would be in one pass;
the frames skipped in fast decoding (non-reference ones) are the same in both. Only containers
that seek exactly by their index (MP4/MOV, Matroska/WebM) are split; a seek that lands after a
span's first instant, or any other failure, makes the caller decode in one pass instead (logged).

Memory stays bounded whatever the video's length: at most ``workers`` spans run at once, each a
queue of at most ``depth`` frames ahead of the consumer, which takes them span by span, in order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from indexer.keyframes import INSTANT_TOLERANCE, Keyframes
from indexer.prefetch import Prefetcher

MIN_SPAN_SAMPLES = 8  # fewest sample instants in a span: a span costs a container open and a seek

T = TypeVar("T")


@dataclass(frozen=True)
class DecodeSpan:
    """A stretch of a video decoded on its own: from the keyframe at ``keyframe_pts`` (stream time
    base; None: from the start of the stream), serving the sample instants ``times[first:stop]``;
    ``last`` when it runs to the end of the stream (and so checks for truncation)."""

    keyframe_pts: int | None
    first: int
    stop: int
    last: bool


def plan_spans(times: np.ndarray, keyframes: Keyframes, min_samples: int = MIN_SPAN_SAMPLES) -> list[DecodeSpan]:
    """Cut the sample instants ``times`` float64 ``[n]`` (ascending) into spans at keyframes, each
    with at least ``min_samples`` instants (the last may have fewer; one span when none can be cut).
    A span starts at a keyframe at or before its first instant (within the 1 microsecond that sampling
    allows), so every instant's frame is decoded from the span's own keyframe."""
    spans: list[DecodeSpan] = []
    first, start = 0, None
    for pts, seconds in zip(keyframes.pts.tolist(), keyframes.seconds.tolist()):
        cut = int(np.searchsorted(times, seconds - INSTANT_TOLERANCE, side="left"))  # first instant at/after this keyframe
        if cut - first >= min_samples and cut < len(times):
            spans.append(DecodeSpan(start, first, cut, last=False))
            first, start = cut, pts
    spans.append(DecodeSpan(start, first, len(times), last=True))
    return spans


def _holding_a_slot(items: Callable[[], Iterator[T]], slots: threading.Semaphore) -> Iterator[T]:
    """``items()``, each item made while holding one of ``slots`` (the decoders allowed to run at
    once); the slot is free while the item waits for room in its queue, so spans further ahead never
    keep the one the consumer waits for from running."""
    with slots:
        produced = items()
    try:
        while True:
            with slots:
                try:
                    item = next(produced)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(produced, "close", None)
        if close is not None:
            close()  # a generator's cleanup (closing the container) runs on the producer's thread


def run_spans(spans: list[DecodeSpan], decode_span: Callable[[DecodeSpan], Iterator[T]], workers: int,
              depth: int, name: str = "vidseek-span") -> Iterator[T]:
    """The items of ``decode_span(span)`` for every span, in order: each span on its own producer
    thread (:class:`~indexer.prefetch.Prefetcher`, at most ``depth`` items ahead), up to ``2 *
    workers`` started and ``workers`` decoding at once. An error in a span is raised here; closing
    this generator (or an error) stops every span's thread and waits for it to end."""
    slots = threading.Semaphore(workers)
    running: deque[Prefetcher[T]] = deque()
    started = 0
    try:
        while True:
            while len(running) < 2 * workers and started < len(spans):
                span = spans[started]
                producer = Prefetcher(lambda span=span: _holding_a_slot(lambda: decode_span(span), slots), depth,
                                      f"{name}-{started}")
                running.append(producer.start())
                started += 1
            if not running:
                return
            yield from running[0]
            running.popleft().close()
    finally:
        for producer in running:
            producer.close()
