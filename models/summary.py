"""Compressed token summaries of videos: what ingestion stores per video for reranking and localisation.

A :class:`VideoSummary` is a small set of tokens in the ViT's hidden space (``W``; project them into
CLIP space with ``ClipBackbone.project`` for late interaction with text embeddings), each with the
number of original patch tokens it stands for and the frames it covers, so a matched token points
at a moment of the video. :func:`summarize` builds one from ``SegmentEncoding.patch_tokens`` /
``cls_attention`` with a method of ``models.registry.SUMMARIZERS``: HoliTom (``models.holitom``) or VQToken
(``models.vqtoken``), each module's ``video_summary``; long videos are
summarised chunk by chunk and joined with :func:`concat`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from models.registry import SUMMARIZERS

FORMAT_VERSION = 1
NO_POSITION = -1


@dataclass(frozen=True)
class VideoSummary:
    """A compressed token set of a video (or of a chunk of one).

    Attributes:
        tokens: ``[M, W]`` float32 tokens in the ViT's hidden space (before ``ln_post``).
        sizes: ``[M]`` int64 number of original ``(frame, patch)`` tokens each token stands for.
        frame_start: ``[M]`` int64 first sampled frame the token covers.
        frame_end: ``[M]`` int64 last sampled frame it covers (inclusive).
        positions: ``[M]`` int64 patch position in raster order, ``-1`` where a token has no single
            position (a VQ code).
        frame_times: ``[T]`` float64 time of each sampled frame, seconds from the start of the video.
        num_patches: ``N``, patch positions per frame.
        method: ``"holitom"`` or ``"vqtoken"``.
        params: the method's resolved hyper-parameters (JSON-serialisable).
        index_map: ``[T, N]`` int64 token (row of ``tokens``) of every original patch token, for
            methods that keep one (VQToken's token hash), else None.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    frame_start: torch.Tensor
    frame_end: torch.Tensor
    positions: torch.Tensor
    frame_times: torch.Tensor
    num_patches: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    index_map: torch.Tensor | None = None

    def __post_init__(self) -> None:
        m = self.tokens.shape[0]
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [M, W], got {tuple(self.tokens.shape)}")
        for name in ("sizes", "frame_start", "frame_end", "positions"):
            if tuple(getattr(self, name).shape) != (m,):
                raise ValueError(f"{name} must be [{m}], got {tuple(getattr(self, name).shape)}")
        if self.frame_times.ndim != 1:
            raise ValueError(f"frame_times must be [T], got {tuple(self.frame_times.shape)}")
        if self.index_map is not None and tuple(self.index_map.shape) != (self.num_frames, self.num_patches):
            raise ValueError(
                f"index_map must be [{self.num_frames}, {self.num_patches}], got {tuple(self.index_map.shape)}"
            )
        SUMMARIZERS[self.method]  # raises for an unknown method

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frame_times.shape[0])

    def to_bytes(self) -> bytes:
        """Compact serialisation: an in-memory ``.npz`` of fp16 tokens, int32 index arrays, float64
        frame times and a JSON header."""
        header = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "params": self.params,
            "num_patches": self.num_patches,
        }
        arrays = {
            "tokens": self.tokens.detach().cpu().to(torch.float16).numpy(),
            "sizes": _int32(self.sizes),
            "frame_start": _int32(self.frame_start),
            "frame_end": _int32(self.frame_end),
            "positions": _int32(self.positions),
            "frame_times": self.frame_times.detach().cpu().to(torch.float64).numpy(),
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
        }
        if self.index_map is not None:
            arrays["index_map"] = _int32(self.index_map)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> VideoSummary:
        """Inverse of :meth:`to_bytes` (tokens come back as float32 holding the fp16 values)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes().decode())
            if header.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported summary format {header.get('format')!r}")
            return cls(
                tokens=torch.from_numpy(npz["tokens"]).float(),
                sizes=torch.from_numpy(npz["sizes"]).long(),
                frame_start=torch.from_numpy(npz["frame_start"]).long(),
                frame_end=torch.from_numpy(npz["frame_end"]).long(),
                positions=torch.from_numpy(npz["positions"]).long(),
                frame_times=torch.from_numpy(npz["frame_times"]),
                num_patches=int(header["num_patches"]),
                method=header["method"],
                params=header["params"],
                index_map=torch.from_numpy(npz["index_map"]).long() if "index_map" in npz.files else None,
            )


def _int32(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.int32).numpy()


def concat(parts: Sequence[VideoSummary]) -> VideoSummary:
    """Join the summaries of consecutive chunks of one video into one summary.

    Frame indices of later chunks are shifted by the frames before them, and ``index_map`` entries by
    the tokens before them. All parts must share method, parameters and ``num_patches``, and their
    frame times must not go back in time.
    """
    if not parts:
        raise ValueError("concat needs at least one summary")
    first = parts[0]
    for part in parts[1:]:
        if (part.method, part.params, part.num_patches) != (first.method, first.params, first.num_patches):
            raise ValueError("summaries to concatenate must share method, params and num_patches")
        if (part.index_map is None) != (first.index_map is None):
            raise ValueError("either all or none of the summaries must have an index_map")
    for before, after in zip(parts[:-1], parts[1:]):
        if before.num_frames and after.num_frames and after.frame_times[0] < before.frame_times[-1]:
            raise ValueError("summaries must be given in time order")
    frame_offsets = np.cumsum([0] + [p.num_frames for p in parts[:-1]]).tolist()
    token_offsets = np.cumsum([0] + [p.num_tokens for p in parts[:-1]]).tolist()
    index_map = None
    if first.index_map is not None:
        index_map = torch.cat([p.index_map + o for p, o in zip(parts, token_offsets)])
    return VideoSummary(
        tokens=torch.cat([p.tokens for p in parts]),
        sizes=torch.cat([p.sizes for p in parts]),
        frame_start=torch.cat([p.frame_start + o for p, o in zip(parts, frame_offsets)]),
        frame_end=torch.cat([p.frame_end + o for p, o in zip(parts, frame_offsets)]),
        positions=torch.cat([p.positions for p in parts]),
        frame_times=torch.cat([p.frame_times for p in parts]),
        num_patches=first.num_patches,
        method=first.method,
        params=first.params,
        index_map=index_map,
    )


def summarize(
    method: str,
    patch_tokens: torch.Tensor,
    cls_attention: torch.Tensor | None,
    frame_times: torch.Tensor | Sequence[float],
    code_vectors: str = "unit",
    **params: Any,
) -> VideoSummary:
    """Compress one video's (or chunk's) patch tokens. The summary's tensors are on the CPU.

    Args:
        method: a name in ``models.registry.SUMMARIZERS``: ``"holitom"`` (params:
            :class:`~models.holitom.HoliTomParams`) or ``"vqtoken"`` (params: :class:`~models.vqtoken.VQTokenParams`).
        patch_tokens: ``[T, N, W]`` last-layer hidden states per patch position
            (``SegmentEncoding.patch_tokens`` of one segment, or several segments' frames joined).
        cls_attention: ``[T, N]`` last-layer CLS-to-patch attention; HoliTom needs it, VQToken ignores it.
        frame_times: ``[T]`` seconds of each frame.
        code_vectors: VQToken only: ``"unit"`` stores VQToken's codebook (means of the L2-normalised
            tokens it clusters); ``"raw"`` stores the means of each code's raw tokens, at the tokens'
            own scale, for a reader that takes codes as ordinary tokens (a video LLM without VQToken's
            trained VQ-Attention).
        **params: hyper-parameters of the method; unknown names raise ``TypeError``.
    """
    if patch_tokens.ndim != 3:
        raise ValueError(f"patch_tokens must be [T, N, W], got {tuple(patch_tokens.shape)}")
    frames = patch_tokens.shape[0]
    # HoliTom and VQToken cluster in float32 on the tokens cast up (the ViT may run in bf16/fp16).
    patch_tokens = patch_tokens.float()
    cls_attention = None if cls_attention is None else cls_attention.float()
    times = torch.as_tensor(frame_times, dtype=torch.float64).cpu()
    if tuple(times.shape) != (frames,):
        raise ValueError(f"frame_times must be [{frames}], got {tuple(times.shape)}")
    return SUMMARIZERS.create(method, patch_tokens, cls_attention, times, code_vectors, **params)
