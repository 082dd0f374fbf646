"""Measuring an encoder while ingestion runs it: wall time, frames, tokens and FLOPs (``models.flops``),
without changing what it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

from models.encoders import SegmentEncoder, SegmentEncoding
from models.flops import count_flops


@dataclass
class Meter:
    """Running totals of visual work.

    ``flops`` counts the encoder and ViT patch embeddings run outside it (static-frame
    dropping); ``encode_seconds`` times the encoder only; ``overhead_seconds`` is time spent
    counting FLOPs (to be left out of wall-clock rates).
    """

    encode_seconds: float = 0.0
    overhead_seconds: float = 0.0
    frames_encoded: int = 0
    tokens: int = 0
    flops: int = 0

    def snapshot(self) -> Meter:
        return Meter(**{f.name: getattr(self, f.name) for f in fields(self)})

    def minus(self, earlier: Meter) -> Meter:
        return Meter(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MeteredEncoder:
    """A :class:`SegmentEncoder` that measures the one it wraps, returning its output unchanged.

    Wall time is taken around each ``encode`` call (synchronising CUDA). FLOPs come from a
    separate, untimed pass: for each new segment shape one segment is run under
    :func:`count_flops` and the count is scaled by the batch size. That is exact for encoders
    whose work depends on the shape only (plain CLIP, TempMe's fixed merge schedule), and it
    keeps the counter's per-op overhead out of the timing.

    While attached, a forward hook on the ViT's ``conv1`` counts frames patch-embedded outside
    ``encode`` -- the signatures static-frame dropping computes (``models.bvllm.patch_signature``)
    -- and adds their FLOPs.
    """

    def __init__(self, inner: SegmentEncoder):
        self.inner = inner
        self.name = inner.name
        self.backbone = inner.backbone
        self.meter = Meter()
        self._flops_per_segment: dict[tuple[tuple[int, ...], bool], int] = {}
        self._conv1_flops_per_frame: int | None = None
        self._inside = False

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, with_tokens: bool = False) -> SegmentEncoding:
        b, t = pixels.shape[:2]
        key = (tuple(pixels.shape[1:]), with_tokens)
        self._inside = True
        try:
            if key not in self._flops_per_segment:
                started = time.perf_counter()
                _, self._flops_per_segment[key] = count_flops(lambda: self.inner.encode(pixels[:1], with_tokens))
                self.meter.overhead_seconds += time.perf_counter() - started
            device = pixels.device
            _synchronize(device)
            started = time.perf_counter()
            out = self.inner.encode(pixels, with_tokens)
            _synchronize(device)
            self.meter.encode_seconds += time.perf_counter() - started
        finally:
            self._inside = False
        self.meter.frames_encoded += b * t
        self.meter.tokens += b * out.tokens_per_segment
        self.meter.flops += b * self._flops_per_segment[key]
        return out

    def _count_patch_embedding(
        self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if self._inside:
            return
        if self._conv1_flops_per_frame is None:
            started = time.perf_counter()
            self._inside = True  # the counting pass calls conv1 again
            try:
                _, self._conv1_flops_per_frame = count_flops(lambda: module(inputs[0][:1]))
            finally:
                self._inside = False
            self.meter.overhead_seconds += time.perf_counter() - started
        self.meter.flops += inputs[0].shape[0] * self._conv1_flops_per_frame

    @contextmanager
    def attached(self) -> Iterator[MeteredEncoder]:
        """Count patch embeddings computed outside the encoder while inside this block."""
        handle = self.backbone.visual.conv1.register_forward_hook(self._count_patch_embedding)
        try:
            yield self
        finally:
            handle.remove()
