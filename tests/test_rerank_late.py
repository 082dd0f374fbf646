"""Late-interaction reranking math on constructed summaries: coverage, B-VLLM-style frame and token
selection, the combined score, and the refined moment from HoliTom frame ranges / the VQToken index map."""

import pytest
import torch
import torch.nn.functional as F

from models.bvllm import select_frames
from models.rerankers.late import (
    LateParams,
    coverage,
    frame_relevance,
    frames_of_tokens,
    late_interaction,
    late_interaction_batch,
    pack,
    project_summaries,
    run_around,
    tokens_in_frames,
)
from models.summary import NO_POSITION, VideoSummary, summarize

E = 4


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


def holitom_like(ranges: list[tuple[int, int]], sizes: list[int], frames: int) -> VideoSummary:
    """A summary with one token per (first, last) frame range; tokens themselves are not used."""
    m = len(ranges)
    return VideoSummary(
        tokens=torch.zeros(m, 8),
        sizes=torch.tensor(sizes),
        frame_start=torch.tensor([r[0] for r in ranges]),
        frame_end=torch.tensor([r[1] for r in ranges]),
        positions=torch.arange(m),
        frame_times=torch.arange(frames, dtype=torch.float64) * 2.0,  # a frame every 2 s
        num_patches=4,
        method="holitom",
    )


def vq_like(index_map: torch.Tensor, num_codes: int) -> VideoSummary:
    frames, patches = index_map.shape
    counts = torch.bincount(index_map.flatten(), minlength=num_codes)
    return VideoSummary(
        tokens=torch.zeros(num_codes, 8),
        sizes=counts,
        frame_start=torch.zeros(num_codes, dtype=torch.long),
        frame_end=torch.full((num_codes,), frames - 1),
        positions=torch.full((num_codes,), NO_POSITION),
        frame_times=torch.arange(frames, dtype=torch.float64),
        num_patches=patches,
        method="vqtoken",
        index_map=index_map,
    )


def dense(cov) -> torch.Tensor:
    a = torch.zeros(cov.num_frames, cov.num_tokens)
    a.index_put_((cov.frame, cov.token), cov.weight, accumulate=True)
    return a


def test_coverage_of_holitom_ranges_spreads_size_over_the_frames() -> None:
    # a static token of 2 positions over frames 0-3 (size 8), a kept dynamic token at frame 2, a contextual
    # cluster of 3 at frame 5
    s = holitom_like([(0, 3), (2, 2), (5, 5)], [8, 1, 3], frames=6)
    expected = torch.tensor([[2, 0, 0], [2, 0, 0], [2, 1, 0], [2, 0, 0], [0, 0, 0], [0, 0, 3]], dtype=torch.float32)
    assert torch.equal(dense(coverage(s)), expected)


def test_coverage_of_a_vq_index_map_counts_patches_per_code() -> None:
    index_map = torch.tensor([[0, 0, 1], [2, 2, 2]])
    assert torch.equal(dense(coverage(vq_like(index_map, 3))), torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]))


def test_frame_relevance_is_the_patch_weighted_mean_and_uncovered_frames_are_minus_inf() -> None:
    s = holitom_like([(0, 3), (2, 2), (5, 5)], [8, 1, 3], frames=6)
    scores = torch.tensor([0.1, 0.7, 0.4])
    f = frame_relevance(coverage(s), scores)
    assert f[2].item() == pytest.approx((2 * 0.1 + 0.7) / 3)
    assert f[0].item() == pytest.approx(0.1) and f[5].item() == pytest.approx(0.4)
    assert f[4].item() == -float("inf")


def test_tokens_in_frames_and_frames_of_tokens() -> None:
    cov = coverage(holitom_like([(0, 3), (2, 2), (5, 5)], [8, 1, 3], frames=6))
    frames = torch.tensor([False, False, True, False, False, False])
    assert tokens_in_frames(cov, frames).tolist() == [True, True, False]
    assert frames_of_tokens(cov, torch.tensor([False, True, True])).tolist() == [False, False, True, False, False, True]


def test_run_around_stays_inside_its_group() -> None:
    mask = torch.tensor([True, False, True, True, True, True, True, False])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # the run 2..6 crosses the group boundary at 4
    first, last = run_around(mask, torch.tensor([3, 5]), group, 2)
    assert first.tolist() == [2, 4] and last.tolist() == [3, 6]


def test_pack_numbers_frames_and_tokens_globally_and_times_each_frame() -> None:
    a = holitom_like([(0, 1), (2, 2)], [2, 1], frames=3)
    b = vq_like(torch.tensor([[0, 1], [1, 1]]), 2)
    packed = pack([unit(1, 0, 0, 0).expand(2, E), unit(0, 1, 0, 0).expand(2, E)], [a, b], [coverage(a), coverage(b)], 0.5)
    assert packed.token_video.tolist() == [0, 0, 1, 1] and packed.frame_video.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(dense(packed.coverage)[:3, :2], dense(coverage(a))) and torch.equal(dense(packed.coverage)[3:, 2:], dense(coverage(b)))
    assert packed.frame_start.tolist() == [0.0, 2.0, 4.0, 0.0, 1.0]
    assert packed.frame_end.tolist() == [2.0, 4.0, 4.5, 1.0, 1.5]  # a frame lasts until the next; the last 0.5 s


def test_frame_selection_decides_which_tokens_count() -> None:
    """Frame 0 has one excellent token among poor ones, frame 1 only good tokens: with one frame
    selected (B-VLLM top-L), frame 1 wins on its mean and frame 0's excellent token does not count."""
    s = holitom_like([(0, 0), (0, 0), (0, 0), (1, 1), (1, 1)], [1, 1, 1, 1, 1], frames=2)
    text = unit(1, 0, 0, 0)
    units = torch.stack([unit(1, 0, 0, 0), unit(-1, 1, 0, 0), unit(-1, 0, 1, 0), unit(0.8, 0.6, 0, 0), unit(0.8, 0, 0.6, 0)])
    one = late_interaction(units, s, text, first_stage=0.0, params=LateParams(num_frames=1), last_frame_seconds=2.0)
    assert one.frames.tolist() == [1] and one.late == pytest.approx(0.8)
    assert one.best_tokens.tolist() == [3, 4] and (one.start_frame, one.end_frame) == (1, 1)
    both = late_interaction(units, s, text, first_stage=0.0, params=LateParams(num_frames=2), last_frame_seconds=2.0)
    assert both.late == pytest.approx(1.0) and both.best_tokens[0] == 0


def test_combined_score_mixes_first_stage_and_late() -> None:
    s = holitom_like([(0, 1)], [2], frames=2)
    units = unit(0.6, 0.8, 0, 0)[None]
    r = late_interaction(units, s, unit(1, 0, 0, 0), 0.3, LateParams(weight=0.25), 1.0)
    assert r.late == pytest.approx(0.6) and r.score == pytest.approx(0.75 * 0.3 + 0.25 * 0.6)


def test_moment_is_the_run_of_the_best_holitom_tokens_around_the_anchor() -> None:
    # best token: static over frames 4-7; second best touches it at frame 8; third best far away (frame 15)
    ranges = [(0, 3), (4, 7), (8, 8), (15, 15), (10, 12)]
    s = holitom_like(ranges, [4, 8, 1, 1, 3], frames=20)
    units = torch.stack([unit(0, 1, 0, 0), unit(1, 0, 0, 0), unit(0.9, 0.3, 0, 0), unit(0.85, 0, 0.5, 0), unit(0, 0, 1, 0)])
    r = late_interaction(units, s, unit(1, 0, 0, 0), 0.0, LateParams(num_frames=20, moment_tokens=3), 2.0)
    assert r.best_tokens.tolist() == [1, 2, 3]
    assert (r.start_frame, r.end_frame) == (4, 8)
    assert (r.start, r.end) == (8.0, 18.0)  # frames are 2 s apart: frame 4 at 8 s, frame 8 lasts until 18 s
    alone = late_interaction(units, s, unit(1, 0, 0, 0), 0.0, LateParams(num_frames=20, moment_tokens=1), 2.0)
    assert (alone.start_frame, alone.end_frame) == (4, 7)


def test_moment_from_the_vq_index_map() -> None:
    # code 0 is background everywhere but frames 10-12, where code 1 (the match) covers half the patches;
    # code 2 appears at frames 3 and 11
    index_map = torch.zeros(20, 4, dtype=torch.long)
    index_map[10:13, :2] = 1
    index_map[3, 3] = index_map[11, 3] = 2
    s = vq_like(index_map, 3)
    units = torch.stack([unit(0, 1, 0, 0), unit(1, 0, 0, 0), unit(0.5, 0, 0.8, 0)])
    r = late_interaction(units, s, unit(1, 0, 0, 0), 0.0, LateParams(num_frames=4, moment_tokens=1), 1.0)
    assert r.late == pytest.approx(1.0) and (r.start_frame, r.end_frame) == (10, 12) and (r.start, r.end) == (10.0, 13.0)
    assert set(r.frames.tolist()) >= {10, 11, 12}
    # with the second code included, its occurrence at frame 11 lies inside the run; the one at frame 3 does not join it
    two = late_interaction(units, s, unit(1, 0, 0, 0), 0.0, LateParams(num_frames=4, moment_tokens=2), 1.0)
    assert (two.start_frame, two.end_frame) == (10, 12)


def test_project_summaries_batches_exactly_like_per_summary_projection(tiny_backbone) -> None:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, tiny_backbone.width, generator=g) for n in (3, 1, 5)]
    batched = project_summaries(parts, tiny_backbone.project)
    for part, out in zip(parts, batched):
        with torch.inference_mode():
            expected = F.normalize(tiny_backbone.project(part), dim=-1)
        torch.testing.assert_close(out, expected)
    assert project_summaries([], tiny_backbone.project) == []


def test_late_interaction_finds_the_matching_stretch_of_a_real_holitom_summary(tiny_backbone) -> None:
    """Frames 10-13 of a 24-frame video carry a distinct pattern; a text whose embedding is that pattern's
    projection finds them and the refined moment is inside them."""
    g = torch.Generator().manual_seed(1)
    w = tiny_backbone.width
    base = torch.randn(49, w, generator=g)
    tokens = base.expand(24, 49, w).clone() + 0.05 * torch.randn(24, 49, w, generator=g)
    pattern = 3 * torch.randn(w, generator=g)
    tokens[10:14, 20:30] += pattern
    attention = torch.rand(24, 49, generator=g).softmax(dim=-1)
    s = summarize("holitom", tokens, attention, [float(t) for t in range(24)], retain_ratio=0.2)
    (units,) = project_summaries([s.tokens], tiny_backbone.project)
    with torch.inference_mode():
        text = F.normalize(tiny_backbone.project(tokens[11, 25]), dim=-1)
    r = late_interaction(units, s, text, 0.0, LateParams(num_frames=4), 1.0)
    assert set(r.frames.tolist()) <= set(range(10, 14))
    assert 10 <= r.start_frame <= r.end_frame <= 13 and r.late > 0.9


def test_a_batch_scores_every_video_as_it_would_alone_and_selects_frames_like_bvllm() -> None:
    g = torch.Generator().manual_seed(2)
    summaries, units = [], []
    for frames, method in [(12, "holitom"), (30, "vqtoken"), (5, "holitom"), (20, "holitom")]:
        tokens, attention = torch.randn(frames, 9, 8, generator=g), torch.rand(frames, 9, generator=g)
        params = {"retain_ratio": 0.3} if method == "holitom" else {"num_codes": 6}
        s = summarize(method, tokens, attention, [2.0 * t for t in range(frames)], **params)
        summaries.append(s)
        units.append(F.normalize(torch.randn(s.num_tokens, E, generator=g), dim=-1))
    text, params = unit(1, 1, 0, 0), LateParams(num_frames=4, moment_tokens=2)
    packed = pack(units, summaries, [coverage(s) for s in summaries], 2.0)
    batch = late_interaction_batch(packed, text, [0.1, 0.2, 0.3, 0.4], params)
    for s, u, first, got in zip(summaries, units, [0.1, 0.2, 0.3, 0.4], batch):
        alone = late_interaction(u, s, text, first, params, 2.0)
        # Packed and single-video scores come from differently shaped kernels: equal to rounding, not to the bit
        # (AVX-512/AMX and AVX2 machines round them differently). Moments and frame choices stay exact.
        assert (got.score, got.late) == (pytest.approx(alone.score, rel=1e-5, abs=1e-6), pytest.approx(alone.late, rel=1e-5, abs=1e-6))
        assert (got.start, got.end) == (alone.start, alone.end)
        assert torch.equal(got.frames, alone.frames) and torch.equal(got.best_tokens, alone.best_tokens)
        relevance = frame_relevance(coverage(s), u @ text)
        assert torch.equal(got.frames, select_frames(relevance, params.num_frames).nonzero().squeeze(1))
