"""Segment encoders: a batch of equal-length frame segments -> segment embeddings.

``full`` runs plain CLIP on every frame; ``tempme`` (``models.tempme``) merges tokens inside
the ViT; ``models.registry.ENCODERS`` lists them. Both return a :class:`SegmentEncoding`, so ingestion does not care which ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.registry import ENCODERS


@dataclass(frozen=True)
class SegmentEncoding:
    """Encoder output for ``B`` segments of ``T`` frames each.

    Attributes:
        embeddings: ``[B, E]`` segment embeddings: mean of the L2-normalised frame
            embeddings, re-normalised.
        frame_embeddings: ``[B, T, E]`` L2-normalised per-frame embeddings.
        patch_tokens: ``[B, T, N, W]`` last-layer hidden states per original patch position
            (before ln_post), or None when not requested.
        cls_attention: ``[B, T, N]`` last-layer CLS-to-patch attention per frame, or None.
        tokens_per_segment: visual tokens (CLS included) the last ViT layer processed per segment.
    """

    embeddings: torch.Tensor
    frame_embeddings: torch.Tensor
    patch_tokens: torch.Tensor | None
    cls_attention: torch.Tensor | None
    tokens_per_segment: int


class SegmentEncoder(Protocol):
    """Encodes pixels ``[B, T, 3, S, S]`` into a :class:`SegmentEncoding`."""

    name: str
    backbone: ClipBackbone

    def encode(self, pixels: torch.Tensor, with_tokens: bool = False) -> SegmentEncoding: ...


def pool_frames(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """``[B, T, E]`` L2-normalised frame embeddings -> ``[B, E]`` normalised mean (CLIP4Clip meanP)."""
    return F.normalize(frame_embeddings.mean(dim=1), dim=-1)


class FullClipEncoder:
    """Baseline: every frame through the unmodified ViT (``T * (1 + N)`` tokens per layer)."""

    name = "full"

    def __init__(self, backbone: ClipBackbone):
        self.backbone = backbone

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, with_tokens: bool = False) -> SegmentEncoding:
        b, t = pixels.shape[:2]
        out = self.backbone.encode_frames(pixels.flatten(0, 1))
        frames = out.embeddings.view(b, t, -1)
        n = self.backbone.num_patches
        return SegmentEncoding(
            embeddings=pool_frames(frames),
            frame_embeddings=frames,
            patch_tokens=out.hidden[:, 1:].reshape(b, t, n, -1) if with_tokens else None,
            cls_attention=out.cls_attention.view(b, t, n) if with_tokens else None,
            tokens_per_segment=t * (1 + n),
        )


def build_encoder(name: str, backbone: ClipBackbone, tempme_weights: Path | None = None) -> SegmentEncoder:
    """The encoder called ``name`` (``VIDSEEK_ENCODER``, one of ``models.registry.ENCODERS``) over
    ``backbone``; ``tempme_weights`` is an optional trained TempMe checkpoint (LoRA + video positions),
    handed to the encoders whose entry takes ``weights``: the encoder then runs over a new backbone
    carrying them (``encoder.backbone``; ``backbone`` is left unchanged)."""
    method = ENCODERS[name]
    options = {"weights": tempme_weights} if "weights" in method.options else {}
    return method.load()(backbone, **options)
