"""Property tests (hypothesis) of the token-merging methods beyond ToMe's bipartite matching
(tests/test_merging.py): whatever the input, the sizes of the merged tokens account for the
input tokens and every output is finite. TempMe runs the tiny ViT for real."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.backbone import ClipBackbone
from models.holitom import HoliTomParams, dpc_knn_centers, holitom, merge_into_centers
from models.tempme import TempMeConfig, TempMeEncoder
from models.vqtoken import VQTokenParams, vqtoken


def _video_tokens(frames: int, positions: int, dim: int, still: float, seed: int) -> torch.Tensor:
    """``[T, N, D]`` tokens in which about a share ``still`` of the positions do not change over time
    (so that HoliTom finds static runs), the rest random."""
    gen = torch.Generator().manual_seed(seed)
    moving = torch.randn(frames, positions, dim, generator=gen)
    static = torch.randn(1, positions, dim, generator=gen).expand(frames, -1, -1)
    is_still = (torch.rand(1, positions, 1, generator=gen) < still).expand(frames, -1, dim)
    return torch.where(is_still, static + 0.01 * moving, moving)


@settings(max_examples=8, deadline=None)
@given(
    segments=st.integers(1, 2),
    frames=st.integers(1, 14),
    image_r=st.integers(0, 12),
    cross=st.floats(0.0, 0.9),
    intra=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_tempme_sizes_sum_to_the_input_tokens(
    tiny_backbone: ClipBackbone, segments: int, frames: int, image_r: int, cross: float, intra: float, seed: int
) -> None:
    config = TempMeConfig(image_r=image_r, cross_clip_ratio=cross, intra_clip_ratio=intra)
    encoder = TempMeEncoder(tiny_backbone, config)
    size = tiny_backbone.image_size
    pixels = torch.randn(segments, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = encoder.encode_tokens(pixels)
        encoding = encoder.encode(pixels)
    per_segment = out.size.view(segments, -1).sum(dim=1)
    assert torch.all(per_segment == frames * (1 + tiny_backbone.num_patches))
    assert torch.all(out.size >= 1) and torch.isfinite(out.hidden).all()
    assert torch.isfinite(encoding.embeddings).all()
    torch.testing.assert_close(encoding.embeddings.norm(dim=-1), torch.ones(segments))


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 8),
    positions=st.integers(1, 20),
    dim=st.integers(2, 8),
    still=st.floats(0.0, 1.0),
    retain=st.floats(0.05, 1.0),
    tau=st.floats(0.5, 0.99),
    contextual=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_holitom_sizes_account_for_the_tokens(
    frames: int, positions: int, dim: int, still: float, retain: float, tau: float, contextual: float, seed: int
) -> None:
    tokens = _video_tokens(frames, positions, dim, still, seed)
    attention = torch.rand(frames, positions, generator=torch.Generator().manual_seed(seed + 1))
    out = holitom(tokens, attention, HoliTomParams(retain_ratio=retain, tau=tau, contextual_ratio=contextual))
    assert torch.isfinite(out.tokens).all() and out.tokens.shape == (len(out.sizes), dim)
    assert torch.all(out.sizes >= 1) and int(out.sizes.sum()) <= frames * positions  # pruned tokens drop out
    budget = max(1, math.floor(retain * frames * positions + 1e-9))  # the retain ratio is an upper bound
    assert len(out.sizes) == min(budget, frames * positions - out.segmentation.total_reduced)
    assert torch.all((0 <= out.frame_start) & (out.frame_start <= out.frame_end) & (out.frame_end < frames))
    assert torch.all((0 <= out.positions) & (out.positions < positions))
    full = holitom(tokens, attention, HoliTomParams(retain_ratio=1.0, tau=tau, contextual_ratio=contextual))
    assert int(full.sizes.sum()) == frames * positions  # nothing is pruned at retain_ratio 1


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 30),
    centers=st.integers(1, 30),
    k=st.integers(1, 30),
    beta=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_dpc_knn_cluster_merging_keeps_every_token_once(
    batch: int, length: int, centers: int, k: int, beta: float, seed: int
) -> None:
    x = torch.randn(batch, length, 5, generator=torch.Generator().manual_seed(seed))
    chosen, dist = dpc_knn_centers(x, min(centers, length), min(k, length))
    merged, counts = merge_into_centers(x, chosen, dist, beta)
    assert torch.all(counts.sum(dim=1) == length) and torch.all(counts >= 1)
    assert torch.isfinite(merged).all() and merged.shape == (batch, min(centers, length), 5)


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 6),
    positions=st.integers(1, 12),
    codes=st.integers(1, 10),
    still=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_vqtoken_codes_cover_every_token(frames: int, positions: int, codes: int, still: float, seed: int) -> None:
    tokens = _video_tokens(frames, positions, 6, still, seed)
    codes = min(codes, frames * positions)  # a fixed K needs at least K tokens (a ValueError otherwise)
    out = vqtoken(tokens, VQTokenParams(num_codes=codes, seed=seed))
    assert int(out.counts.sum()) == frames * positions and torch.all(out.counts >= 1)
    assert out.index_map.shape == (frames, positions)
    assert torch.all((0 <= out.index_map) & (out.index_map < len(out.codebook)))
    assert torch.isfinite(out.codebook).all()
