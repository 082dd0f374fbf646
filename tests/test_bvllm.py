"""B-VLLM-style frame selection for a query and static-frame dropping before the ViT (models/bvllm.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.bvllm import (
    STATIC_CHANGE_THRESHOLD,
    drop_static_frames,
    group_ranks,
    patch_change,
    patch_signature,
    select_frames,
)


def _unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


# ----- frame selection ---------------------------------------------------------------------
def _kept(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(1).tolist()


def test_top_frames_keep_temporal_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.95, 0.0])
    assert _kept(select_frames(scores, num_frames=3)) == [1, 3, 5]  # best three are 5, 1, 3; in time order


def test_ties_go_to_the_earlier_frame():
    scores = torch.tensor([0.5, 0.7, 0.5, 0.7, 0.5])
    assert _kept(select_frames(scores, num_frames=3)) == [0, 1, 3]


def test_budget_larger_than_video_keeps_every_frame():
    assert _kept(select_frames(torch.tensor([0.3, 0.1]), num_frames=16)) == [0, 1]


def test_select_frames_rejects_empty_input_and_budget():
    with pytest.raises(ValueError):
        select_frames(torch.zeros(0), num_frames=4)
    with pytest.raises(ValueError):
        select_frames(torch.zeros(3), num_frames=0)


def test_packed_videos_are_selected_each_on_its_own():
    """Videos laid end to end keep each its own top-L, exactly as one at a time."""
    g = torch.Generator().manual_seed(4)
    lengths = [7, 2, 12, 5]
    scores = [torch.rand(n, generator=g).round(decimals=1) for n in lengths]  # rounding makes ties
    video = torch.arange(len(lengths)).repeat_interleave(torch.tensor(lengths))
    packed = select_frames(torch.cat(scores), 3, video, len(lengths))
    assert torch.equal(packed, torch.cat([select_frames(s, 3) for s in scores]))
    assert torch.bincount(video[packed]).tolist() == [3, 2, 3, 3]


def test_group_ranks_rank_within_groups_ties_to_the_lower_index() -> None:
    values = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.7, 0.7, -float("inf")])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    assert group_ranks(values, group, 3).tolist() == [1, 0, 2, 2, 0, 1, 0]


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
