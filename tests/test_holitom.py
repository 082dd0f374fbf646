"""HoliTom: temporal segmentation DP, DPC-kNN, budget arithmetic, end-to-end counts, inner-LLM merge."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.holitom import (
    HoliTomParams,
    adjusted_retain_ratio,
    consecutive_similarity,
    dpc_knn_centers,
    holitom,
    inner_llm_merge,
    merge_into_centers,
    segment_windows,
    select_dominant,
    static_run_lengths,
    spread,
    video_budget,
    window_budget,
    window_gains,
)


def similar_pairs(pattern: list[str]) -> torch.Tensor:
    """``[T-1, N]`` similarity from strings, one per consecutive frame pair: '1' similar (0.9), '0' not (0.1)."""
    return torch.tensor([[0.9 if c == "1" else 0.1 for c in row] for row in pattern])


def reference_segmentation(similarity: torch.Tensor, tau: float, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """The reference ``select_static_windows`` loops, transcribed literally (slow, obviously correct)."""
    frames = similarity.shape[0] + 1

    def count(s: int, e: int) -> int:
        static = (similarity[s:e] > tau).all(dim=0)
        return int(static.sum()) * (e - s)

    dp, prev = [0] * frames, [0] * frames
    for i in range(frames):
        best, best_j = (dp[i - 1] if i > 0 else 0), i
        for w in range(2, min(i + 1, max_window) + 1):
            j = i - w
            value = (dp[j] if j >= 0 else 0) + count(j + 1, i)
            if value > best:
                best, best_j = value, j + 1
        dp[i], prev[i] = best, best_j
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], dp[-1]


def exhaustive_best(similarity: torch.Tensor, tau: float, max_window: int) -> int:
    """Maximum tokens removable over every segmentation into windows of at most ``max_window`` frames."""
    frames = similarity.shape[0] + 1
    best = 0
    for cuts in itertools.product([False, True], repeat=frames - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [frames]
        windows = list(zip(bounds[:-1], [b - 1 for b in bounds[1:]]))
        if any(e - s + 1 > max_window for s, e in windows):
            continue
        total = sum(int((similarity[s:e] > tau).all(dim=0).sum()) * (e - s) for s, e in windows if e > s)
        best = max(best, total)
    return best


# ----- temporal segmentation -------------------------------------------------------------------


def test_consecutive_similarity_is_per_position_cosine() -> None:
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [2.0, 0.0]]])  # T=2, N=2, D=2
    torch.testing.assert_close(consecutive_similarity(tokens), torch.tensor([[1.0, 0.0]]))


def test_static_run_lengths_worked_example() -> None:
    # 5 frames, 3 positions; pair rows (0,1) (1,2) (2,3) (3,4)
    sim = similar_pairs(["110", "101", "111", "010"])
    runs = static_run_lengths(sim, tau=0.8)
    expected = torch.tensor([[3, 1, 0], [2, 0, 2], [1, 2, 1], [0, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(runs, expected)


def test_similarity_threshold_is_strict() -> None:
    assert static_run_lengths(torch.tensor([[0.8]]), tau=0.8).tolist() == [[0], [0]]


def test_window_gains_match_definition() -> None:
    torch.manual_seed(0)
    sim = torch.rand(7, 5)
    tau = 0.3
    gains = window_gains(static_run_lengths(sim, tau), max_window=5)
    assert gains.shape == (8, 5)
    for s in range(8):
        for length in range(5):
            e = s + length
            expected = int((sim[s:e] > tau).all(dim=0).sum()) * length if e < 8 else 0
            assert gains[s, length] == expected, (s, length)


def test_segmentation_prefers_two_full_windows_over_one_long_window() -> None:
    # positions 0,1 are static over all 5 frames; positions 2,3 over frames 0-2 and 3-4 only.
    # One window [0,4] removes 2*4 = 8 tokens; [0,2] + [3,4] removes 4*2 + 4*1 = 12.
    sim = similar_pairs(["1111", "1111", "1100", "1111"])
    seg = segment_windows(static_run_lengths(sim, 0.8), max_window=1024)
    assert seg.windows == [(0, 2), (3, 4)]
    assert seg.total_reduced == 12


def test_segmentation_hand_example_with_single_frames() -> None:
    # frames 0-2 fully static (4 positions x 2 = 8), a cut, frames 3-5 static at 2 positions (2 x 2 = 4),
    # a cut, frame 6 alone.
    sim = similar_pairs(["1111", "1111", "0000", "1100", "1100", "0000"])
    seg = segment_windows(static_run_lengths(sim, 0.8), max_window=1024)
    assert seg.windows == [(0, 2), (3, 5), (6, 6)]
    assert seg.total_reduced == 12


def test_segmentation_caps_window_length() -> None:
    sim = similar_pairs(["1"] * 9)  # 10 static frames, 1 position
    seg = segment_windows(static_run_lengths(sim, 0.8), max_window=4)
    assert max(e - s + 1 for s, e in seg.windows) <= 4
    assert seg.total_reduced == 10 - 3  # ceil(10 / 4) windows, each saving its length - 1


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_matches_reference_loops_and_is_optimal(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    frames, positions, max_window = 8, 4, 5
    sim = (torch.rand(frames - 1, positions, generator=generator) < 0.7).float()  # dense static runs
    seg = segment_windows(static_run_lengths(sim, 0.5), max_window)
    windows, total = reference_segmentation(sim, 0.5, max_window)
    assert seg.windows == windows
    assert seg.total_reduced == total == exhaustive_best(sim, 0.5, max_window)
    covered = [f for s, e in seg.windows for f in range(s, e + 1)]
    assert covered == list(range(frames))


def test_adjusted_retain_ratio() -> None:
    assert adjusted_retain_ratio(0.1, 100, 50) == pytest.approx(0.2)
    assert adjusted_retain_ratio(0.1, 100, 0) == pytest.approx(0.1)
    assert adjusted_retain_ratio(0.6, 100, 50) == 1.0


# ----- spatial merging -------------------------------------------------------------------------


def test_dpc_knn_finds_one_centre_per_obvious_cluster() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres[:, None, :] + 0.1 * torch.randn(3, 6, 2, generator=generator)).reshape(18, 2)
    x = x[torch.randperm(18, generator=generator)]
    blob = torch.cdist(x, centres).argmin(dim=1)
    picked, dist = dpc_knn_centers(x[None], num_centers=3, k=3)
    assert picked.shape == (1, 3)
    assert picked[0].tolist() == sorted(picked[0].tolist())
    assert sorted(blob[picked[0]].tolist()) == [0, 1, 2]
    merged, counts = merge_into_centers(x[None], picked, dist, beta=0.6)
    assert counts[0].tolist() == [6, 6, 6]
    for slot, centre in enumerate(picked[0].tolist()):
        members = (blob == blob[centre]) & (torch.arange(18) != centre)
        expected = 0.6 * x[centre] + 0.4 * x[members].mean(dim=0)
        torch.testing.assert_close(merged[0, slot], expected)


def test_dpc_knn_density_peak_worked_example() -> None:
    # 1-D points (D=1, so dist = |a - b|): cluster A around 0.2, cluster B around 10.1, an outlier at 30.
    x = torch.tensor([[0.0], [0.2], [0.5], [10.0], [10.1], [10.3], [10.6], [30.0]])
    picked, dist = dpc_knn_centers(x[None], num_centers=2, k=3)
    # density = exp(-mean d^2 over self + 2 nearest): 10.1 -> exp(-0.0167) = 0.983 is the densest
    # (delta = largest distance, 30); 0.2 -> exp(-0.0433) = 0.958 has delta 9.8 (to 10.0), score 9.4;
    # every other point is 0.1-0.3 from a denser one (score < 0.3); the outlier's density is ~0.
    assert picked[0].tolist() == [1, 4]
    merged, counts = merge_into_centers(x[None], picked, dist, beta=0.6)
    assert counts[0].tolist() == [3, 5]  # the outlier joins the nearer centre, 10.1
    torch.testing.assert_close(merged[0, :, 0], torch.tensor([0.6 * 0.2 + 0.4 * 0.25, 0.6 * 10.1 + 0.4 * 15.225]))


def test_merge_into_centers_hand_example() -> None:
    x = torch.tensor([[[0.0], [1.0], [10.0], [12.0], [30.0]]])
    dist = torch.cdist(x, x)
    merged, counts = merge_into_centers(x, torch.tensor([[0, 2, 4]]), dist, beta=0.6)
    torch.testing.assert_close(merged[0, :, 0], torch.tensor([0.4, 10.8, 30.0]))
    assert counts[0].tolist() == [2, 2, 1]


def test_select_dominant_per_frame_counts() -> None:
    attention = torch.tensor([[0.1, 0.5, 0.3, 0.9], [0.4, 0.3, 0.2, 0.1]])
    candidates = torch.tensor([[True, True, True, False], [True, True, True, True]])
    kept = select_dominant(attention, candidates, torch.tensor([2, 1]))
    assert kept.tolist() == [[False, True, True, False], [True, False, False, False]]


# ----- end to end --------------------------------------------------------------------------------


def random_video(
    frames: int = 12, positions: int = 49, dim: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(frames, positions, dim, generator=generator)
    attention = torch.rand(frames, positions, generator=generator).softmax(dim=-1)
    return tokens, attention


def static_background_video(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """12 frames x 49 positions: 39 positions barely change, positions 0..9 are new every frame."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, 49, 32, generator=generator) + 0.05 * torch.randn(12, 49, 32, generator=generator)
    tokens[:, :10] = torch.randn(12, 10, 32, generator=generator)
    attention = torch.rand(12, 49, generator=generator).softmax(dim=-1)
    return tokens, attention


def test_spread_apportions_evenly() -> None:
    # 58 tokens over 12 equal windows: 4 or 5 each, the fives evenly spaced, not the first ten
    assert spread(torch.ones(12), 58).tolist() == [4, 5, 5, 5, 5, 5, 4, 5, 5, 5, 5, 5]
    assert spread(torch.tensor([1.0, 3.0]), 8).tolist() == [2, 6]
    assert spread(torch.ones(3), 0).tolist() == [0, 0, 0]
    # floating-point shares that add up to a whole number still add up to it
    quotas = torch.tensor([0.1] * 10)
    assert int(spread(quotas, 1).sum()) == 1


def test_video_budget_is_at_most_the_retain_ratio_and_at_least_one_token() -> None:
    assert video_budget(torch.tensor([49] * 12), 0.10, 588).tolist() == [4, 5, 5, 5, 5, 5, 4, 5, 5, 5, 5, 5]
    # one window holding everything left after temporal merging keeps floor(0.1 x 588)
    assert video_budget(torch.tensor([159]), 0.10, 588).tolist() == [58]
    # a one-frame video with four patches keeps one token, not zero
    assert video_budget(torch.tensor([4]), 0.10, 4).tolist() == [1]
    # temporal merging left fewer tokens than the budget: all of them are kept
    assert video_budget(torch.tensor([39 + 120]), 0.5, 588).tolist() == [159]


def test_window_budget_splits_static_dominant_and_contextual() -> None:
    # the static background example: 39 static + 12 x 10 dynamic at ratio' 0.3698 keeps 58;
    # static round(14.42) = 14, dynamic 44 = 3 per frame + 1 in 8 evenly spaced frames.
    ratio = adjusted_retain_ratio(0.10, 588, 429)
    budget = window_budget(58, 39, 10, 12, ratio)
    assert budget.static == 14 and budget.contextual == 0
    assert budget.dominant.tolist() == [3, 4, 4, 3, 4, 4, 3, 4, 4, 3, 4, 4]
    # the contextual share is the same in every frame; the uneven remainder stays with dominant tokens
    budget = window_budget(49, 0, 49, 4, 0.25, contextual_ratio=0.5)
    assert budget.contextual == 6 and sorted(budget.dominant.tolist()) == [6, 6, 6, 7]
    # nothing dropped at ratio 1; a frame never keeps more than its dynamic tokens, static ones take the rest
    budget = window_budget(159, 39, 10, 12, 1.0)
    assert budget.static == 39 and budget.dominant.tolist() == [10] * 12
    budget = window_budget(4, 3, 1, 2, 0.95)
    assert budget.static == 3 and budget.dominant.tolist() == [0, 1]
    budget = window_budget(1, 1, 0, 2, 0.3)  # round(0.3) = 0 static clusters would lose the token
    assert budget.static == 1 and budget.dominant.tolist() == [0, 0]


@pytest.mark.parametrize("retain", [0.05, 0.10, 0.25, 0.5])
def test_no_static_tokens_keeps_attention_top_k_within_the_retain_ratio(retain: float) -> None:
    tokens, attention = random_video()
    out = holitom(tokens, attention, HoliTomParams(retain_ratio=retain))
    assert out.segmentation.windows == [(t, t) for t in range(12)]
    assert out.tokens.shape == (math.floor(retain * 12 * 49), 32)
    assert out.sizes.tolist() == [1] * out.tokens.shape[0]
    assert torch.equal(out.frame_start, out.frame_end)
    per_frame = torch.bincount(out.frame_start, minlength=12)
    assert per_frame.max() - per_frame.min() <= 1
    for t in range(12):
        expected = attention[t].topk(int(per_frame[t])).indices.sort().values
        assert out.positions[out.frame_start == t].tolist() == expected.tolist()
    torch.testing.assert_close(out.tokens, tokens[out.frame_start, out.positions])


def test_static_background_counts_worked_example() -> None:
    tokens, attention = static_background_video()
    out = holitom(tokens, attention, HoliTomParams(retain_ratio=0.10))
    # one window over all 12 frames, 39 static positions: 39 * 11 = 429 tokens removed;
    # budget 0.1 / ((588 - 429) / 588) = 0.3698 over the 159 tokens left: floor(58.8) = 58;
    # static 39 -> round(14.42) = 14 clusters; dynamic 44 = 3 per frame + 1 in 8 frames.
    assert out.segmentation.windows == [(0, 11)]
    assert out.segmentation.total_reduced == 429
    assert out.retain_ratio == pytest.approx(0.1 / (159 / 588))
    static = out.frame_end > out.frame_start
    assert int(static.sum()) == 14 and out.tokens.shape[0] == 14 + 44 <= 0.10 * 588
    assert (out.frame_start[static] == 0).all() and (out.frame_end[static] == 11).all()
    assert (out.positions[static] >= 10).all() and (out.positions[~static] < 10).all()
    assert int(out.sizes[static].sum()) == 39 * 12  # every static token is in some cluster
    assert out.sizes[~static].tolist() == [1] * 44
    order = out.frame_start * 49 + out.positions
    assert torch.equal(order, order.sort().values)


def test_retain_one_keeps_every_token() -> None:
    tokens, attention = static_background_video()
    out = holitom(tokens, attention, HoliTomParams(retain_ratio=1.0))
    assert int(out.sizes.sum()) == 12 * 49
    static = out.frame_end > out.frame_start
    assert int(static.sum()) == 39 and int((~static).sum()) == 12 * 10
    torch.testing.assert_close(out.tokens[static], tokens[:, 10:].mean(dim=0))
    torch.testing.assert_close(out.tokens[~static], tokens[:, :10].reshape(-1, 32), rtol=0, atol=0)

    plain, plain_attention = random_video()
    identity = holitom(plain, plain_attention, HoliTomParams(retain_ratio=1.0))
    assert torch.equal(identity.tokens, plain.reshape(-1, 32))
    assert identity.positions.tolist() == list(range(49)) * 12


def test_contextual_tokens_account_for_every_token() -> None:
    tokens, attention = static_background_video()
    out = holitom(tokens, attention, HoliTomParams(retain_ratio=0.25, contextual_ratio=0.5))
    assert int(out.sizes.sum()) == 12 * 49
    dynamic = out.frame_end == out.frame_start
    budget = window_budget(147, 39, 10, 12, out.retain_ratio, contextual_ratio=0.5)  # floor(0.25 x 588)
    assert budget.contextual > 0
    per_frame = torch.bincount(out.frame_start[dynamic], minlength=12)
    assert per_frame.tolist() == (budget.dominant + budget.contextual).tolist()
    assert int(dynamic.sum()) + budget.static <= 0.25 * 12 * 49


def test_holitom_is_deterministic_and_sizes_bounded() -> None:
    tokens, attention = static_background_video(seed=3)
    a = holitom(tokens, attention, HoliTomParams(retain_ratio=0.1, tau=0.65))
    b = holitom(tokens, attention, HoliTomParams(retain_ratio=0.1, tau=0.65))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)
    assert int(a.sizes.sum()) <= 12 * 49
    assert ((a.positions >= 0) & (a.positions < 49)).all()


def test_params_are_validated() -> None:
    with pytest.raises(ValueError):
        HoliTomParams(retain_ratio=0.0)
    with pytest.raises(ValueError):
        HoliTomParams(max_window=1)


# ----- inner-LLM merge -------------------------------------------------------------------------


def reference_inner_merge(
    hidden: torch.Tensor, attention: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's per-token loop: kept = (kept + other) / 2, others in index order."""
    hidden = hidden.clone()
    length = hidden.shape[1]
    top = attention[0].topk(round(length * (1 - ratio))).indices
    others = [i for i in range(length) if i not in set(top.tolist())]
    kept_states = hidden[0, top]
    other_states = hidden[0, others]
    sim = torch.nn.functional.normalize(other_states, dim=-1) @ torch.nn.functional.normalize(kept_states, dim=-1).T
    for i, target in zip(others, sim.argmax(dim=-1).tolist()):
        t = int(top[target])
        hidden[0, t] = (hidden[0, t] + hidden[0, i]) / 2
    kept = top.sort().values
    return hidden[0, kept], kept


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_inner_llm_merge_matches_sequential_reference(ratio: float) -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 40, 16, generator=generator, dtype=torch.float64)
    attention = torch.rand(1, 40, generator=generator, dtype=torch.float64)
    out = inner_llm_merge(hidden, attention, ratio)
    expected_hidden, expected_kept = reference_inner_merge(hidden, attention, ratio)
    assert out.kept[0].tolist() == expected_kept.tolist()
    assert out.hidden.shape == (1, round(40 * (1 - ratio)), 16)
    torch.testing.assert_close(out.hidden[0], expected_hidden)


def test_inner_llm_merge_without_merging_is_a_gather() -> None:
    hidden = torch.randn(2, 10, 4)
    attention = torch.rand(2, 10)
    out = inner_llm_merge(hidden, attention, 0.0)
    assert out.kept.tolist() == [list(range(10))] * 2
    assert torch.equal(out.hidden, hidden)
