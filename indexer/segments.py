"""The segment encoder: batches of frame groups -> one embedding per segment, plus the video's
compressed token summary fed segment by segment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from indexer.frames import FrameGroup
from models.encoders import SegmentEncoder
from models.summary import VideoSummary, concat, summarize

CPU_BATCH_SEGMENTS = 4
# Frames per forward pass on a CUDA device with at least CUDA_FULL_BATCH_GIB of memory; smaller
# devices get a proportional share. A HEURISTIC, not a measurement: ViT-B/32 costs ~4.4 GFLOP
# per 224 px frame, so 384 frames (~1.7 TFLOP per pass) should keep a data-centre GPU's kernels
# busy, and its activations (~50 tokens x 768 wide per frame, plus TempMe/summary tokens) need
# well under 1 GiB. To be replaced by a sweep on a GPU worker (benchmarks/ingest_bench.py
# --batch-segments ...); no GPU was available when it was written.
CUDA_BATCH_FRAMES = 384
CUDA_FULL_BATCH_GIB = 16


@dataclass(frozen=True)
class EncodedSegment:
    """One segment's frames and its ``[E]`` L2-normalised embedding."""

    group: FrameGroup
    embedding: np.ndarray


def weighted_segment_embedding(frame_embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[T, E]`` normalised frame embeddings, ``[T]`` weights -> ``[E]`` normalised weighted mean.
    With unit weights this is the encoder's own mean pooling."""
    return F.normalize((frame_embeddings * weights[:, None]).sum(0), dim=-1)


def default_batch_segments(device: torch.device, segment_frames: int) -> int:
    """``VIDSEEK_BATCH_SEGMENTS=0`` (auto): :data:`CPU_BATCH_SEGMENTS` on CPU; on CUDA about
    :data:`CUDA_BATCH_FRAMES` frames per pass, scaled down on devices under
    :data:`CUDA_FULL_BATCH_GIB` (see the note on those constants: a heuristic awaiting measurement)."""
    if device.type != "cuda":
        return CPU_BATCH_SEGMENTS
    memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    frames = CUDA_BATCH_FRAMES * min(1.0, memory_gib / CUDA_FULL_BATCH_GIB)
    return max(CPU_BATCH_SEGMENTS, int(frames // segment_frames))


class SummaryBuilder:
    """Collects patch tokens segment by segment and compresses them chunk by chunk (bounded memory)."""

    def __init__(self, method: str, chunk_frames: int, params: dict):
        self.method, self.chunk_frames, self.params = method, chunk_frames, params
        self._tokens: list[torch.Tensor] = []
        self._attention: list[torch.Tensor] = []
        self._times: list[float] = []
        self._parts: list[VideoSummary] = []

    def add(self, patch_tokens: torch.Tensor, cls_attention: torch.Tensor, times: list[float]) -> None:
        """One segment: ``patch_tokens [T, N, W]``, ``cls_attention [T, N]``, ``times`` of its T frames."""
        self._tokens.append(patch_tokens)
        self._attention.append(cls_attention)
        self._times.extend(times)
        if len(self._times) >= self.chunk_frames:
            self._flush()

    def _flush(self) -> None:
        if self._times:
            self._parts.append(
                summarize(self.method, torch.cat(self._tokens), torch.cat(self._attention), self._times, **self.params)
            )
            self._tokens, self._attention, self._times = [], [], []

    def build(self) -> VideoSummary | None:
        self._flush()
        return concat(self._parts) if self._parts else None


class SegmentBatchEncoder:
    """Runs ``encoder`` over batches of equally long frame groups; feeds ``summary`` when given."""

    def __init__(self, encoder: SegmentEncoder, summary: SummaryBuilder | None = None):
        self.encoder, self.summary = encoder, summary

    def encode(self, batch: list[FrameGroup]) -> list[EncodedSegment]:
        """``batch``: groups of T frames each -> their segments, in order. A segment's embedding is
        the weighted mean of its frame embeddings, weighted by the sampled frames each one stands for."""
        pixels = torch.stack([torch.stack([f.pixels for f in g.frames]) for g in batch])  # [B, T, 3, S, S]
        encoding = self.encoder.encode(pixels, with_tokens=self.summary is not None)
        segments = []
        for i, group in enumerate(batch):
            weights = torch.tensor(group.weights, dtype=encoding.frame_embeddings.dtype)
            vector = weighted_segment_embedding(encoding.frame_embeddings[i], weights.to(encoding.frame_embeddings.device))
            segments.append(EncodedSegment(group, vector.cpu().numpy()))
            if self.summary is not None:
                self.summary.add(encoding.patch_tokens[i], encoding.cls_attention[i], group.times)
        return segments
