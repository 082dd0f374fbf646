"""B-VLLM-style frame and token selection (models/bvllm.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.backbone import ClipBackbone
from models.bvllm import (
    BVLLM_MERGE_THRESHOLD,
    BVLLM_TOKENS_PER_FRAME,
    BVLLM_TOTAL_TOKENS,
    STATIC_CHANGE_THRESHOLD,
    BVLLMConfig,
    drop_static_frames,
    frame_scores,
    frame_token_budget,
    merge_down,
    merge_groups,
    patch_change,
    patch_signature,
    sample_tokens,
    select_for_query,
    select_frames,
    threshold_matching,
)


def _unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


# ----- frame selection ---------------------------------------------------------------------
def test_frame_scores_are_cosines():
    text = torch.tensor([2.0, 0.0])
    frames = torch.stack([_unit(1, 0), _unit(0, 1), _unit(-1, 1)])
    assert torch.allclose(frame_scores(text, frames), torch.tensor([1.0, 0.0, -math.sqrt(0.5)]))


def test_top_frames_keep_temporal_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.95, 0.0])
    sel = select_frames(scores, num_frames=3)
    assert sel.indices.tolist() == [1, 3, 5]  # best three are 5, 1, 3; returned in time order
    assert torch.allclose(sel.weights, torch.full((3,), 1 / 3))


def test_ties_go_to_the_earlier_frame():
    scores = torch.tensor([0.5, 0.7, 0.5, 0.7, 0.5])
    assert select_frames(scores, num_frames=3).indices.tolist() == [0, 1, 3]


def test_budget_larger_than_video_keeps_every_frame():
    sel = select_frames(torch.tensor([0.3, 0.1]), num_frames=16)
    assert sel.indices.tolist() == [0, 1]


def test_select_frames_rejects_empty_input_and_budget():
    with pytest.raises(ValueError):
        select_frames(torch.zeros(0), num_frames=4)
    with pytest.raises(ValueError):
        select_frames(torch.zeros(3), num_frames=0)


def test_softmax_weights_follow_scores():
    scores = torch.tensor([0.2, 0.3, 0.25, 0.1])
    sel = select_frames(scores, num_frames=3, temperature=0.01)
    assert sel.indices.tolist() == [0, 1, 2]
    expected = torch.tensor([0.2, 0.3, 0.25]).div(0.01).softmax(dim=0)
    assert torch.allclose(sel.weights, expected)
    assert sel.weights.argmax().item() == 1


# ----- B-VLLM threshold matching -----------------------------------------------------------
def test_threshold_matching_merges_into_best_earlier_frame():
    a, b, c = _unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)
    metric = torch.stack(
        [
            a,  # 0 kept
            b,  # 1 kept (orthogonal to 0: mapped similarity 0.5)
            _unit(1, 0.1, 0),  # 2 -> 0
            c,  # 3 kept
            _unit(0.1, 1, 0),  # 4 -> 1: any earlier frame, not only the previous one
            -a,  # 5 kept: cosine -1 maps to 0
        ]
    )
    groups = threshold_matching(metric, BVLLM_MERGE_THRESHOLD)
    assert groups.kept.tolist() == [0, 1, 3, 5]
    assert groups.group.tolist() == [0, 1, 0, 2, 1, 3]
    assert groups.sizes.tolist() == [2, 2, 1, 1]


def test_threshold_matching_uses_mapped_similarity_and_strict_threshold():
    # Orthogonal frames have cosine 0, mapped (0 + 1) / 2 = 0.5 exactly: not above 0.5.
    metric = torch.stack([_unit(1, 0), _unit(0, 1)])
    assert threshold_matching(metric, 0.5).kept.tolist() == [0, 1]
    assert threshold_matching(metric, 0.49).kept.tolist() == [0]


def test_threshold_matching_follows_chains_to_the_kept_frame():
    # Frame 1 matches 0 (cos 0.8); frame 2 matches 1 best (cos 0.8) and 0 less (cos 0.28).
    # B-VLLM would drop frame 2 with frame 1's row; here it joins frame 0's group.
    angle = math.acos(0.8)
    metric = torch.stack([_unit(math.cos(k * angle), math.sin(k * angle)) for k in range(3)])
    groups = threshold_matching(metric, 0.85)  # mapped: 0.9, 0.9, 0.64
    assert groups.kept.tolist() == [0]
    assert groups.group.tolist() == [0, 0, 0]


def test_merge_groups_is_unweighted_mean():
    metric = torch.stack([_unit(1, 0), _unit(0, 1), _unit(1, 0.01), _unit(1, 0.02)])
    groups = threshold_matching(metric, 0.9)
    x = torch.tensor([[0.0, 3.0], [10.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    assert torch.allclose(merge_groups(groups, x), torch.tensor([[3.0, 1.0], [10.0, 0.0]]))
    tokens = torch.arange(4 * 5 * 2, dtype=torch.float32).view(4, 5, 2)
    assert torch.allclose(merge_groups(groups, tokens)[0], tokens[[0, 2, 3]].mean(dim=0))


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 24), threshold=st.floats(0.5, 1.0), seed=st.integers(0, 10_000))
def test_groups_partition_frames_and_are_led_by_their_earliest_frame(t, threshold, seed):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(t, 3, generator=g)  # low dimension: plenty of matches
    groups = threshold_matching(metric, threshold)
    assert groups.group.shape == (t,)
    assert int(groups.sizes.sum()) == t
    assert groups.kept.tolist() == sorted(groups.kept.tolist())
    assert torch.equal(groups.group[groups.kept], torch.arange(groups.kept.numel()))
    for frame, group in enumerate(groups.group.tolist()):
        assert groups.kept[group] <= frame


# ----- spatial sampling and ToMe merge-down ------------------------------------------------
def test_frame_token_budget_matches_the_official_formula():
    for frames in range(1, 200):
        official = int(max(1, (BVLLM_TOTAL_TOKENS // BVLLM_TOKENS_PER_FRAME) / frames * BVLLM_TOKENS_PER_FRAME))
        assert frame_token_budget(BVLLM_TOTAL_TOKENS, frames, BVLLM_TOKENS_PER_FRAME) == min(32, official)
    assert frame_token_budget(576, 18, 32) == 32
    assert frame_token_budget(576, 24, 32) == 24
    assert frame_token_budget(576, 1000, 32) == 1


def test_sampling_picks_the_tokens_closest_to_the_text():
    g = torch.Generator().manual_seed(0)
    f, n, e = 3, 49, 16
    text = F.normalize(torch.randn(e, generator=g), dim=0)
    tokens = torch.randn(f, n, e, generator=g)
    tokens -= (tokens @ text)[..., None] * text  # every token orthogonal to the text ...
    hot = [[4, 9, 30, 31, 48], [0, 1, 2, 3, 40], [7, 17, 27, 37, 47]]
    for frame, positions in enumerate(hot):
        for rank, p in enumerate(positions):
            tokens[frame, p] += (5.0 - rank) * text  # ... except these, which point at it
    out = sample_tokens(tokens, text, keep=5, budget=5)
    assert out.tokens.shape == (f, 5, e)
    assert out.size.flatten().tolist() == [1.0] * 15
    for frame, positions in enumerate(hot):
        assert out.source[frame].nonzero()[:, 1].tolist() == positions  # raster order
        assert torch.equal(out.tokens[frame], tokens[frame, positions])


def test_sampling_merges_down_to_the_budget():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(4, 49, 8, generator=g)
    text = torch.randn(8, generator=g)
    out = sample_tokens(tokens, text, keep=32, budget=7)
    assert out.tokens.shape == (4, 7, 8)
    assert out.size.sum(dim=(1, 2)).tolist() == [32.0] * 4
    assert torch.equal(out.source.sum(dim=-1, keepdim=True), out.size)
    # The merged tokens hold exactly the 32 patches most similar to the text.
    best = (F.normalize(tokens, dim=-1) @ F.normalize(text, dim=0)).topk(32, dim=-1).indices
    covered = out.source.amax(dim=1)
    assert torch.equal(covered, torch.zeros_like(covered).scatter_(1, best, 1.0))
    # Size-weighted means: the total of the merged tokens is that of the picked ones.
    picked = tokens.gather(1, best[..., None].expand(-1, -1, 8)).sum(dim=1)
    assert torch.allclose((out.tokens * out.size).sum(dim=1), picked, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 64), target=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_merge_down_keeps_sizes_summing_to_the_original_count(length, target, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, 5, generator=g)
    merged, size, source = merge_down(x, target)
    assert merged.shape == (2, min(length, target), 5)
    assert size.sum(dim=(1, 2)).tolist() == [float(length)] * 2
    assert torch.equal(source.sum(dim=1), torch.ones(2, length))  # every original in one token
    assert torch.equal(source.sum(dim=-1, keepdim=True), size)
    assert torch.allclose(merged * size, source @ x, atol=1e-4)


def test_merge_down_five_to_two_needs_two_rounds():
    # B-VLLM would remove 3 of 5 tokens in one round; ToMe removes at most half per round.
    x = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(2))
    merged, size, _ = merge_down(x, 2)
    assert merged.shape == (1, 2, 4)
    assert size.sum().item() == 5.0


# ----- whole query-time selection ----------------------------------------------------------
def _segment(tiny_backbone: ClipBackbone) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A text, 10 frame embeddings (3 and 7 repeat 1; the text likes 1, 3, 5, 7 best), hidden tokens."""
    g = torch.Generator().manual_seed(3)
    e, w, n = tiny_backbone.embed_dim, tiny_backbone.width, tiny_backbone.num_patches
    text = F.normalize(torch.randn(e, generator=g), dim=0)
    frames = torch.randn(10, e, generator=g)
    frames -= (frames @ text)[:, None] * text
    frames = F.normalize(frames, dim=-1)
    frames[[1, 3, 5, 7]] = F.normalize(frames[[1, 3, 5, 7]] + text * torch.tensor([[1.5], [1.0], [1.2], [0.9]]), dim=-1)
    frames[3] = F.normalize(frames[1] + 0.01 * frames[3], dim=0)
    frames[7] = F.normalize(frames[1] + 0.01 * frames[7], dim=0)
    hidden = torch.randn(10, n, w, generator=g)
    return text, frames, hidden


def test_select_for_query_end_to_end(tiny_backbone):
    text, frames, hidden = _segment(tiny_backbone)
    config = BVLLMConfig(num_frames=4, total_tokens=20)
    out = select_for_query(tiny_backbone, text, frames, hidden, config)
    assert out.selection.indices.tolist() == [1, 3, 5, 7]
    assert out.groups.group.tolist() == [0, 0, 1, 0]
    assert out.frame_indices.tolist() == [1, 5]
    assert torch.allclose(out.weights, torch.tensor([0.75, 0.25]))
    assert torch.allclose(out.frame_embeddings[0], F.normalize(frames[[1, 3, 7]].mean(dim=0), dim=0))
    assert torch.allclose(out.frame_embeddings.norm(dim=-1), torch.ones(2))
    # 2 kept frames share 20 tokens: 10 each, merged from the 32 read out per frame.
    assert out.tokens.tokens.shape == (2, 10, tiny_backbone.embed_dim)
    assert out.tokens.size.sum(dim=(1, 2)).tolist() == [32.0, 32.0]
    # The kept frames' tokens come from the averaged hidden maps of their groups.
    projected = tiny_backbone.project(hidden[[1, 3, 7]].mean(dim=0))
    reference = sample_tokens(projected[None], text, keep=32, budget=10)
    assert torch.allclose(out.tokens.tokens[0], reference.tokens[0], atol=1e-5)


def test_select_for_query_is_deterministic(tiny_backbone):
    text, frames, hidden = _segment(tiny_backbone)
    config = BVLLMConfig(num_frames=6, temperature=0.05, total_tokens=40)
    first = select_for_query(tiny_backbone, text, frames, hidden, config)
    second = select_for_query(tiny_backbone, text, frames, hidden, config)
    assert torch.equal(first.frame_indices, second.frame_indices)
    assert torch.equal(first.weights, second.weights)
    assert torch.equal(first.tokens.tokens, second.tokens.tokens)
    assert torch.equal(first.tokens.source, second.tokens.source)


def test_select_for_query_without_patch_tokens(tiny_backbone):
    text, frames, _ = _segment(tiny_backbone)
    out = select_for_query(tiny_backbone, text, frames)
    assert out.tokens is None
    assert out.selection.indices.tolist() == list(range(10))
    assert out.weights.sum().item() == pytest.approx(1.0)


# ----- dropping static frames before the ViT -----------------------------------------------
def _scene(seed: int, size: int = 224) -> torch.Tensor:
    """A textured uint8 RGB image ``[S, S, 3]``: smooth colour blobs plus fine texture."""
    g = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.rand(1, 3, 7, 7, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    texture = 0.15 * torch.rand(1, 3, size, size, generator=g)
    return ((0.8 * blobs + texture).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)


def _noisy(frame: torch.Tensor, count: int, sigma: float, seed: int) -> torch.Tensor:
    """``count`` copies of a uint8 frame with Gaussian noise of ``sigma`` (in [0, 1] units)."""
    g = torch.Generator().manual_seed(seed)
    noise = sigma * 255 * torch.randn(count, *frame.shape, generator=g)
    return (frame.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _times(t: int, fps: float = 2.0) -> torch.Tensor:
    return torch.arange(t, dtype=torch.float32) / fps


def _spans_tile(spans, t: int) -> bool:
    covered = [i for a, b in zip(spans.first.tolist(), spans.last.tolist()) for i in range(a, b + 1)]
    return covered == list(range(t))


def test_static_video_collapses_to_one_frame(tiny_backbone):
    frames = _noisy(_scene(0), count=12, sigma=2 / 255, seed=0)
    spans = drop_static_frames(tiny_backbone, tiny_backbone.pixels_from_frames(frames), _times(12))
    assert spans.kept.tolist() == [0]
    assert (spans.first.tolist(), spans.last.tolist()) == ([0], [11])
    assert (spans.start_time.tolist(), spans.end_time.tolist()) == ([0.0], [5.5])
    assert spans.sizes.tolist() == [12]


def test_alternating_scenes_are_all_kept(tiny_backbone):
    a, b = _scene(1), _scene(2)
    frames = torch.stack([a, b] * 5)
    spans = drop_static_frames(tiny_backbone, tiny_backbone.pixels_from_frames(frames), _times(10))
    assert spans.kept.tolist() == list(range(10))
    assert _spans_tile(spans, 10)


def test_a_small_moving_object_is_kept(tiny_backbone):
    # A 32 px square (one patch) moves 24 px per frame over a static textured background.
    background = _scene(3)
    frames = background[None].repeat(6, 1, 1, 1)
    for t in range(6):
        frames[t, 96:128, 8 + 24 * t : 40 + 24 * t] = torch.tensor([230, 40, 40], dtype=torch.uint8)
    spans = drop_static_frames(tiny_backbone, tiny_backbone.pixels_from_frames(frames), _times(6))
    assert spans.kept.tolist() == list(range(6))


def test_static_half_then_cuts(tiny_backbone):
    t = 16
    frames = torch.cat([_noisy(_scene(4), 8, 2 / 255, seed=1), torch.stack([_scene(10 + i) for i in range(8)])])
    spans = drop_static_frames(tiny_backbone, tiny_backbone.pixels_from_frames(frames), _times(t))
    assert spans.kept.tolist() == [0] + list(range(8, 16))
    assert spans.sizes.tolist() == [8] + [1] * 8
    assert _spans_tile(spans, t)


def test_slow_drift_is_split_against_the_anchor(tiny_backbone):
    # Brightness ramps up a little every frame: each step is below the threshold, the drift is not.
    base = _scene(5).float()
    frames = torch.stack([(base * (0.55 + 0.02 * i)).round().clamp(0, 255).to(torch.uint8) for i in range(20)])
    pixels = tiny_backbone.pixels_from_frames(frames)
    signature = patch_signature(tiny_backbone, pixels)
    steps = torch.stack([patch_change(signature[i], signature[i + 1 : i + 2])[0] for i in range(19)])
    assert steps.max() <= STATIC_CHANGE_THRESHOLD  # comparing with the previous frame would keep one frame
    spans = drop_static_frames(tiny_backbone, pixels, _times(20))
    assert spans.kept.numel() > 1
    assert _spans_tile(spans, 20)
    for anchor, last in zip(spans.first.tolist(), spans.last.tolist()):
        change = patch_change(signature[anchor], signature[anchor : last + 1])
        assert change.max() <= STATIC_CHANGE_THRESHOLD


def test_patch_change_is_relative_to_the_reference_norm():
    reference = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # rms of patch norms: sqrt(25 / 2)
    frames = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[3.0, 4.0], [0.0, 0.0]]])
    assert torch.allclose(patch_change(reference, frames), torch.tensor([1 / math.sqrt(12.5), 0.0]))


def test_drop_static_frames_rejects_mismatched_times(tiny_backbone):
    pixels = tiny_backbone.pixels_from_frames(_noisy(_scene(0), 3, 0.0, 0))
    with pytest.raises(ValueError):
        drop_static_frames(tiny_backbone, pixels, _times(4))
