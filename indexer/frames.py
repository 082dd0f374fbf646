"""The frame stream of one video: sampled frames -> pixels for the ViT -> segments -> batches.

Everything here is a generator over frames in time order, so memory stays bounded by a chunk
or a batch whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.decode import SampledFrame, center_crop, resize_rgb
from models.backbone import ClipBackbone
from models.bvllm import drop_static_frames


@dataclass(frozen=True)
class PreparedFrame:
    """A sampled frame ready for the ViT.

    ``pixels`` is ``[3, S, S]`` normalised; ``weight`` is how many sampled frames it stands for
    (more than 1 when static-frame dropping folded repeats into it); ``image`` is the resized,
    uncropped RGB frame used for thumbnails.
    """

    time: float
    weight: int
    pixels: torch.Tensor
    image: np.ndarray


@dataclass(frozen=True)
class FrameGroup:
    """Consecutive frames that become one segment."""

    ordinal: int
    frames: list[PreparedFrame]

    @property
    def middle(self) -> PreparedFrame:
        return self.frames[len(self.frames) // 2]

    @property
    def times(self) -> list[float]:
        return [f.time for f in self.frames]

    @property
    def weights(self) -> list[int]:
        return [f.weight for f in self.frames]


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def crop_and_normalise(images: Sequence[np.ndarray], backbone: ClipBackbone) -> torch.Tensor:
    """RGB images ``[H, W, 3]`` uint8 whose short side is ``backbone.image_size`` -> their centre
    crops, normalised: pixels ``[B, 3, S, S]`` at the model's dtype."""
    size = backbone.image_size
    return backbone.pixels_from_frames(np.stack([center_crop(image, size) for image in images]))


def prepare_frames(frames: Iterable[SampledFrame], backbone: ClipBackbone, chunk: int = 32) -> Iterator[PreparedFrame]:
    """Centre-crop and normalise sampled frames for ``backbone``, ``chunk`` at a time."""
    for batch in chunks(frames, chunk):
        pixels = crop_and_normalise([f.image for f in batch], backbone)
        for f, p in zip(batch, pixels):
            yield PreparedFrame(f.time, 1, p, f.image)


def prepare_image(image: np.ndarray, backbone: ClipBackbone) -> torch.Tensor:
    """A still RGB picture ``[H, W, 3]`` uint8 of any size -> pixels ``[1, 3, S, S]``, prepared as a
    sampled frame is: resized to a short side of ``image_size`` by the frames' scaler
    (:func:`indexer.decode.resize_rgb`), centre-cropped and normalised (:func:`crop_and_normalise`)."""
    return crop_and_normalise([resize_rgb(image, backbone.image_size)], backbone)


def drop_repeated_frames(
    frames: Iterable[PreparedFrame], backbone: ClipBackbone, threshold: float, chunk: int = 32
) -> Iterator[PreparedFrame]:
    """Stream form of B-VLLM-style static-frame dropping (``models.bvllm.drop_static_frames``):
    a frame that repeats the last kept frame is folded into it (its weight grows) instead of
    being encoded. Each chunk is judged together with the last kept frame as its anchor."""
    anchor: PreparedFrame | None = None
    for batch in chunks(frames, chunk):
        head = [anchor] if anchor is not None else []
        pixels = torch.stack([f.pixels for f in head + batch])
        times = torch.tensor([f.time for f in head + batch], dtype=torch.float64)
        spans = drop_static_frames(backbone, pixels, times, threshold)
        kept = []
        for first, size in zip(spans.first.tolist(), spans.sizes.tolist()):
            frame = (head + batch)[first]
            kept.append(PreparedFrame(frame.time, frame.weight + size - 1, frame.pixels, frame.image))
        if anchor is not None:  # the first span is the anchor's: it grew, it is not new
            anchor = kept.pop(0)
            if kept:
                yield anchor
        for frame in kept[:-1]:
            yield frame
        anchor = kept[-1] if kept else anchor
    if anchor is not None:
        yield anchor


def group_frames(frames: Iterable[PreparedFrame], size: int) -> Iterator[FrameGroup]:
    """Split a frame stream into consecutive groups of ``size`` (the last may be shorter)."""
    for ordinal, batch in enumerate(chunks(frames, size)):
        yield FrameGroup(ordinal, batch)


def batch_groups(groups: Iterable[FrameGroup], batch_segments: int) -> Iterator[list[FrameGroup]]:
    """Batches of up to ``batch_segments`` groups with the same frame count (encoders need equal T)."""
    batch: list[FrameGroup] = []
    for group in groups:
        if batch and (len(batch) == batch_segments or len(group.frames) != len(batch[0].frames)):
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


class UniformFramePicker:
    """Picks, from a stream of prepared frames in time order, the frames shown at ``count`` instants
    spread evenly over the video's sample times -- the uniform frame sampling LLaVA-OneVision uses for
    video. A frame stands for the stream until the next one (static-frame dropping folds repeats into
    the frame before them), so an instant is served by the last frame at or before it; several
    instants may get the same frame."""

    def __init__(self, times: Sequence[float], count: int):
        index = np.linspace(0, len(times) - 1, min(count, len(times))).round().astype(int) if len(times) else []
        self.targets = [times[i] for i in index]
        self.picked: list[PreparedFrame] = []
        self._last: PreparedFrame | None = None

    def tap(self, frames: Iterable[PreparedFrame]) -> Iterator[PreparedFrame]:
        """Pass ``frames`` through, remembering the ones picked."""
        for frame in frames:
            while self._last is not None and len(self.picked) < len(self.targets) and self.targets[len(self.picked)] < frame.time:
                self.picked.append(self._last)
            self._last = frame
            yield frame

    def frames(self) -> list[PreparedFrame]:
        """The picked frames, once the stream is exhausted (instants after the last frame get it)."""
        if self._last is not None:
            self.picked.extend([self._last] * (len(self.targets) - len(self.picked)))
        return self.picked
