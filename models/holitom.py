"""HoliTom: holistic, training-free token merging over a video's patch-token grid.

Follows the official implementation (github.com/cokeshao/HoliTom, ``holitom/llava_arch.py`` and
``holitom/modeling_qwen2.py``) of Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large
Language Models" (arXiv 2505.21334). The outer-LLM part runs on ``T`` frames x ``N`` positions x ``D``:

1. Temporal segmentation: cosine similarity of same-position tokens in consecutive frames; a
   dynamic programme over contiguous windows maximises the number of tokens that temporal merging
   removes (``select_static_windows``).
2. Temporal merging: inside a window, a position similar above ``tau`` at every consecutive pair is
   *static* and becomes one token, the mean over the window's frames (``get_static_dynamic_features``).
3. Spatial merging with a budget corrected for what step 2 removed: dynamic tokens of every frame are
   pruned to the top-k by attention (``merge_tokens_by_attention_density``); static tokens are reduced
   by DPC-kNN clustering (``merge_tokens_by_density`` / ``cluster_dpc_knn`` /
   ``merge_tokens_by_clustering``).

:func:`inner_llm_merge` is the inner-LLM step (``Qwen2Model_holitom.forward``) as a pure function.

One module of ~560 lines on purpose: its functions are the steps of one method, each a small pure
function named after the reference function it follows, so the paper and the official code can be
read side by side with this file.

Deviations from the reference, all deliberate:

* The reference 2x2-pools SigLIP's 27x27 grid first (``get_2dPool``); CLIP ViT-B/32's 7x7 grid is
  already coarse, so tokens are used as they are.
* The reference ranks dynamic tokens by the mean attention SigLIP tokens *receive*; CLIP has a CLS
  token, so its last-layer CLS-to-patch attention stands in (``SegmentEncoding.cls_attention``).
* DPC-kNN breaks density ties by adding ``rand * 1e-6`` noise in the reference; here ties go to the
  lower index, so results are deterministic.
* Tokens are returned ordered by (first frame, patch position) instead of the reference's
  "static block, then dynamic tokens frame by frame" order; every token carries its frame range
  and position, so nothing is lost and the order is canonical.
* The budget is the video's, not each frame's (:func:`video_budget`): the reference keeps
  ``ceil(ratio x dynamic tokens)`` in every frame, which on CLIP's 7 x 7 grid adds a fifth of the
  budget; here ``floor(retain x T x N)`` tokens are apportioned over the windows and frames, so the
  retain ratio is an upper bound. Which tokens a frame keeps is the reference's choice.

The module runs past 400 lines on purpose: it is one method's steps, as small pure functions in the
order of the reference's code (outer merge, then the inner-LLM merge and the summarizer adapter).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from models.summary import VideoSummary


@dataclass(frozen=True)
class HoliTomParams:
    """HoliTom hyper-parameters; defaults are the reference's environment-variable defaults.

    Attributes:
        retain_ratio: fraction of the ``T * N`` tokens to keep at most (``RETAIN_RATIO``, 0.10); e.g.
            58 of 588 at 0.10 (see :func:`video_budget`).
        tau: cosine-similarity threshold above which a position counts as unchanged between two
            consecutive frames (``T``, 0.8; the README's example runs ``RETAIN_RATIO=0.15 T=0.80``,
            lower thresholds such as 0.65 merge more aggressively at small budgets).
        beta: weight of the cluster centre when a DPC-kNN cluster is merged (``BETA``, 0.6).
        k: neighbours for the DPC-kNN density, capped by the number of clusters (``K``, 7).
        max_window: longest window the segmentation considers, in frames (``MAX_WINDOW_SIZE``, 1024).
        contextual_ratio: share of each frame's dynamic budget that goes to DPC-kNN "contextual"
            tokens instead of attention top-k "dominant" tokens (``D``, 0.0: attention only).
    """

    retain_ratio: float = 0.10
    tau: float = 0.8
    beta: float = 0.6
    k: int = 7
    max_window: int = 1024
    contextual_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.retain_ratio <= 1.0:
            raise ValueError(f"retain_ratio must be in (0, 1], got {self.retain_ratio}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.max_window < 2:
            raise ValueError(f"max_window must be >= 2, got {self.max_window}")
        if not 0.0 <= self.contextual_ratio <= 1.0:
            raise ValueError(f"contextual_ratio must be in [0, 1], got {self.contextual_ratio}")


@dataclass(frozen=True)
class Segmentation:
    """Result of the temporal segmentation.

    Attributes:
        windows: contiguous, inclusive ``(start, end)`` frame ranges covering ``0..T-1`` in order.
        total_reduced: tokens removed by temporal merging, ``sum(n_static * (end - start))``.
    """

    windows: list[tuple[int, int]]
    total_reduced: int


@dataclass(frozen=True)
class HoliTomOutput:
    """Compressed token set of one video.

    Attributes:
        tokens: ``[M, D]`` kept / merged tokens, ordered by (``frame_start``, ``positions``).
        sizes: ``[M]`` number of original ``(frame, position)`` tokens each token stands for. Pruned
            dynamic tokens are dropped, not merged, so ``sizes.sum() <= T * N``.
        frame_start: ``[M]`` first frame the token covers.
        frame_end: ``[M]`` last frame (inclusive); a static token spans its whole window.
        positions: ``[M]`` patch position (for a merged cluster, its centre's position).
        segmentation: the temporal windows.
        retain_ratio: the budget after the correction for temporal merging.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    frame_start: torch.Tensor
    frame_end: torch.Tensor
    positions: torch.Tensor
    segmentation: Segmentation
    retain_ratio: float


@dataclass(frozen=True)
class WindowBudget:
    """How many tokens one temporal window keeps (:func:`window_budget`).

    Attributes:
        static: DPC-kNN clusters over the window's static tokens.
        dominant: ``[F]`` attention top-k tokens kept in each of the window's ``F`` frames.
        contextual: DPC-kNN clusters per frame over the dynamic tokens not kept as dominant.
    """

    static: int
    dominant: torch.Tensor
    contextual: int


@dataclass(frozen=True)
class InnerMergeOutput:
    """Result of :func:`inner_llm_merge`.

    Attributes:
        hidden: ``[B, K, D]`` the kept tokens after the others were folded into them.
        kept: ``[B, K]`` their indices in the input sequence, ascending (for rotary positions).
    """

    hidden: torch.Tensor
    kept: torch.Tensor


# ----- temporal segmentation -------------------------------------------------------------------


def consecutive_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each position with itself in the next frame: ``[T, N, D]`` -> ``[T-1, N]``."""
    unit = F.normalize(tokens.float(), dim=-1)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def static_run_lengths(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """For each frame ``t`` and position ``n``, how many consecutive pairs ``(t, t+1), (t+1, t+2), ...``
    are similar above ``tau`` (strict ``>``, as in the reference).

    Position ``n`` is static over the window ``[s, e]`` iff ``runs[s, n] >= e - s``, which is the
    reference's ``cumprod(feature_sim[s:] > tau)`` test, computed once for all windows.

    Args:
        similarity: ``[T-1, N]`` from :func:`consecutive_similarity`.
    Returns:
        ``[T, N]`` int64 run lengths (the last frame's are 0).
    """
    pairs, n = similarity.shape
    frames = pairs + 1
    index = torch.arange(pairs, device=similarity.device)[:, None].expand(pairs, n)
    # A pair that breaks the run stops it at its own index; the last frame stops every run.
    breaks = torch.where(similarity > tau, frames - 1, index)
    breaks = torch.cat([breaks, torch.full((1, n), frames - 1, device=similarity.device)])
    next_break = breaks.flip(0).cummin(dim=0).values.flip(0)
    return next_break - torch.arange(frames, device=similarity.device)[:, None]


def window_gains(runs: torch.Tensor, max_window: int) -> torch.Tensor:
    """Tokens removed by temporally merging each window: ``gain[s, L]`` for the window ``[s, s + L]``.

    ``gain[s, L] = L * #{n : runs[s, n] >= L}`` is the reference's ``pruned_static_count[s, s + L]``
    (static positions x (window length - 1)); windows longer than ``max_window`` frames are not needed.

    Args:
        runs: ``[T, N]`` from :func:`static_run_lengths`.
    Returns:
        ``[T, W]`` int64 with ``W = min(T, max_window)``; column ``L`` is the window of ``L + 1`` frames.
    """
    frames = runs.shape[0]
    width = min(frames, max_window)
    hist = torch.zeros(frames, width, dtype=torch.long, device=runs.device)
    hist.scatter_add_(1, runs.clamp(max=width - 1), torch.ones_like(runs))
    at_least = hist.flip(1).cumsum(1).flip(1)  # at_least[s, L] = #{n : runs[s, n] >= L}
    return at_least * torch.arange(width, device=runs.device)


def segment_windows(runs: torch.Tensor, max_window: int) -> Segmentation:
    """Global redundancy-aware temporal segmentation (reference ``select_static_windows``).

    ``dp[i] = max(dp[i-1], max_{w=2..min(i+1, max_window)} dp[i-w] + count[i-w+1, i])`` with ``dp[-1] = 0``;
    a frame not covered by a longer window is a window of its own. Ties keep the reference's choice:
    the single frame unless a window is strictly better, then the shortest best window. The inner
    maximum is one vector operation per frame, so ``T = 1000`` takes milliseconds.

    Args:
        runs: ``[T, N]`` from :func:`static_run_lengths`.
    """
    frames = runs.shape[0]
    width = min(frames, max_window)
    gains = window_gains(runs, max_window)
    # Re-index by window end: by_end[i, L] = gain of the window [i - L, i] (0 where i - L < 0).
    ends = torch.arange(frames, device=runs.device)[:, None]
    lengths = torch.arange(width, device=runs.device)[None, :]
    by_end = gains[(ends - lengths).clamp(min=0), lengths.expand(frames, width)]
    by_end = by_end.masked_fill(ends < lengths, 0).cpu().numpy()

    best = np.zeros(frames + 1, dtype=np.int64)  # best[i + 1] = dp[i]; best[0] = dp[-1] = 0
    start = np.zeros(frames, dtype=np.int64)
    for i in range(frames):
        best[i + 1], start[i] = best[i], i
        longest = min(i + 1, width)
        if longest >= 2:
            # Windows [i - L, i] for L = 1..longest-1: dp[i - L - 1] + gain, i.e. best[i - L] + gain.
            candidates = best[i - longest + 1 : i][::-1] + by_end[i, 1:longest]
            top = int(candidates.argmax())
            if candidates[top] > best[i + 1]:
                best[i + 1], start[i] = candidates[top], i - 1 - top
    windows = []
    end = frames - 1
    while end >= 0:
        windows.append((int(start[end]), end))
        end = int(start[end]) - 1
    return Segmentation(windows=windows[::-1], total_reduced=int(best[frames]))


def adjusted_retain_ratio(retain_ratio: float, total: int, reduced: int) -> float:
    """Budget for spatial merging once temporal merging removed ``reduced`` of ``total`` tokens:
    ``min(retain / ((total - reduced) / total), 1)`` (reference ``prepare_inputs_labels_for_multimodal``)."""
    return min(retain_ratio / ((total - reduced) / total), 1.0)


# ----- spatial merging -------------------------------------------------------------------------


def spread(quotas: torch.Tensor, total: int) -> torch.Tensor:
    """Whole numbers that add up to ``total``, proportional to ``quotas [W]``: ``[W]`` int64 where entry
    ``w`` is ``floor(cumulative share up to w) - floor(cumulative share before w)``, so every entry is
    the floor or the ceiling of its share and the rounded-up ones are evenly spread (no bias to the
    first windows or frames)."""
    cumulative = torch.floor(quotas.double().cumsum(0) * (total / float(quotas.sum())) + 1e-9).long()
    cumulative[-1] = total
    return torch.diff(cumulative, prepend=cumulative.new_zeros(1))


def video_budget(window_tokens: torch.Tensor, retain_ratio: float, total: int) -> torch.Tensor:
    """Tokens each temporal window keeps: ``window_tokens [W]`` (tokens left in each window after
    temporal merging) -> ``[W]`` int64 adding up to ``max(1, floor(retain_ratio x total))``, or to all
    that is left when temporal merging already removed more.

    The reference gives every frame ``ceil(ratio' x its dynamic tokens)``; on LLaVA-OV's 14 x 14 pooled
    grid that adds at most half a token in 196, on CLIP's 7 x 7 grid it adds a fifth of the budget
    (``ceil(0.1 x 49) = 5`` keeps 10.2 % with nothing static, 11 % on real clips). Apportioning the
    video's budget over its windows in proportion to their tokens (the shares the corrected ratio
    ``ratio'`` gives them) keeps the retain ratio an upper bound, as a user setting it expects, and at
    least one token per video.
    """
    budget = max(1, math.floor(retain_ratio * total + 1e-9))
    return spread(window_tokens.double(), min(budget, int(window_tokens.sum())))


def window_budget(
    kept: int, num_static: int, num_dynamic: int, frames: int, ratio: float, contextual_ratio: float = 0.0
) -> WindowBudget:
    """Split the ``kept`` tokens of one window of ``frames`` frames with ``num_static`` static and
    ``num_dynamic`` dynamic positions (at the corrected ratio ``ratio`` of :func:`adjusted_retain_ratio`).

    Static tokens get ``round(num_static x ratio)`` clusters (reference ``merge_tokens_by_density``),
    more only where the dynamic tokens cannot take the rest; the rest is spread evenly over the
    frames (:func:`spread`), and each frame's share is split into contextual and dominant tokens by
    ``contextual_ratio`` as the reference splits it, the contextual count the same in every frame and
    the uneven remainder going to dominant tokens.
    """
    # ``kept`` never exceeds the window's tokens, so the dynamic part fits in every frame.
    static = max(min(round(num_static * ratio), kept), kept - frames * num_dynamic)
    per_frame = spread(torch.ones(frames), kept - static)
    base = (kept - static) // frames
    contextual = base - round(base * (1 - contextual_ratio))
    return WindowBudget(static=static, dominant=per_frame - contextual, contextual=contextual)


def dpc_knn_centers(x: torch.Tensor, num_centers: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (reference ``cluster_dpc_knn``).

    ``dist = cdist / sqrt(D)``; ``density = exp(-mean of the squared distances to the k nearest``
    (self included)``)``; ``delta`` = distance to the nearest denser token (the densest gets the largest
    distance in the row); centres are the ``num_centers`` highest ``delta * density``.

    Args:
        x: ``[B, L, D]``.
        num_centers: ``C <= L``.
        k: neighbours, ``<= L``.
    Returns:
        ``(centers [B, C]`` ascending token indices, ``dist [B, L, L])``.
    """
    x = x.float()
    length, dim = x.shape[1], x.shape[2]
    dist = torch.cdist(x, x) / dim**0.5
    nearest = dist.topk(k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    index = torch.arange(length, device=x.device)
    # denser[b, i, j]: token j is denser than token i (ties: the lower index is denser).
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None])
    )
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    order = torch.sort(delta * density, dim=-1, descending=True, stable=True).indices
    return order[:, :num_centers].sort(dim=-1).values, dist


def merge_into_centers(
    x: torch.Tensor, centers: torch.Tensor, dist: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign every non-centre token to its nearest centre and merge each cluster into
    ``beta * centre + (1 - beta) * mean(members)`` (a centre without members stays as it is), as in
    the reference ``merge_tokens_by_clustering`` (default, ``NO_BETA=0`` branch).

    Args:
        x: ``[B, L, D]``.
        centers: ``[B, C]`` token indices.
        dist: ``[B, L, L]`` pairwise distances.
    Returns:
        ``(merged [B, C, D], counts [B, C])`` where ``counts`` includes the centre itself.
    """
    batch, length, dim = x.shape
    num_centers = centers.shape[1]
    x = x.float()
    nearest = dist.gather(2, centers[:, None, :].expand(batch, length, num_centers)).argmin(dim=-1)
    is_center = torch.zeros(batch, length, dtype=torch.bool, device=x.device).scatter_(1, centers, True)
    member = (~is_center).to(x.dtype)
    sums = torch.zeros(batch, num_centers, dim, device=x.device).scatter_add_(
        1, nearest[..., None].expand(batch, length, dim), x * member[..., None]
    )
    members = torch.zeros(batch, num_centers, device=x.device).scatter_add_(1, nearest, member)
    center_x = x.gather(1, centers[..., None].expand(batch, num_centers, dim))
    blended = beta * center_x + (1.0 - beta) * sums / members.clamp(min=1.0)[..., None]
    merged = torch.where(members[..., None] > 0, blended, center_x)
    return merged, members.long() + 1


def select_dominant(attention: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per frame, the ``counts[t]`` candidate tokens with the highest attention (reference
    ``merge_tokens_by_attention_density``, dominant tokens), for all frames at once.

    Args:
        attention: ``[T, N]`` importance of each token.
        candidates: ``[T, N]`` bool, tokens that may be kept (a frame's dynamic tokens).
        counts: ``[T]`` how many to keep per frame (``<=`` its number of candidates).
    Returns:
        ``[T, N]`` bool mask of the kept tokens.
    """
    scores = attention.float().masked_fill(~candidates, -math.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank_kept = torch.arange(scores.shape[1], device=scores.device)[None, :] < counts[:, None]
    return torch.zeros_like(candidates).scatter_(1, order, rank_kept)


@dataclass(frozen=True)
class _TokenGroup:
    tokens: torch.Tensor  # [G, D]
    sizes: torch.Tensor  # [G]
    frame_start: torch.Tensor  # [G]
    frame_end: torch.Tensor  # [G]
    positions: torch.Tensor  # [G]


def _concat(groups: list[_TokenGroup]) -> _TokenGroup:
    return _TokenGroup(*(torch.cat([getattr(g, f.name) for g in groups]) for f in fields(_TokenGroup)))


def _clustered(
    x: torch.Tensor, positions: torch.Tensor, num_centers: int, params: HoliTomParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPC-kNN-merge ``x [B, L, D]`` (positions ``[B, L]``) into ``num_centers`` tokens per row:
    ``(tokens [B, C, D], counts [B, C], positions [B, C])``."""
    centers, dist = dpc_knn_centers(x, num_centers, min(params.k, num_centers))
    merged, counts = merge_into_centers(x, centers, dist, params.beta)
    return merged, counts, positions.gather(1, centers)


def _static_group(
    tokens: torch.Tensor, static: torch.Tensor, window: tuple[int, int], num_centers: int, params: HoliTomParams
) -> _TokenGroup | None:
    """Static tokens of one window: mean over the window (reference ``get_static_dynamic_features``),
    then DPC-kNN down to ``num_centers`` (reference ``merge_tokens_by_density``)."""
    if num_centers == 0:
        return None
    start, end = window
    positions = static.nonzero().squeeze(1)
    means = tokens[start : end + 1, positions].float().mean(dim=0)
    merged, counts, kept_positions = _clustered(means[None], positions[None], num_centers, params)
    span = end - start + 1
    return _TokenGroup(
        tokens=merged[0],
        sizes=counts[0] * span,
        frame_start=torch.full((num_centers,), start, dtype=torch.long, device=tokens.device),
        frame_end=torch.full((num_centers,), end, dtype=torch.long, device=tokens.device),
        positions=kept_positions[0],
    )


def _contextual_group(
    tokens: torch.Tensor, rest: torch.Tensor, window: tuple[int, int], num_centers: int, params: HoliTomParams
) -> _TokenGroup:
    """Contextual tokens of one window: per frame, DPC-kNN over the dynamic tokens that were not kept
    as dominant (``rest [F, N]`` bool; frames may differ by one token, so they are clustered one by one)."""
    groups = []
    for frame, frame_rest in enumerate(rest, start=window[0]):
        positions = frame_rest.nonzero().squeeze(1)
        x = tokens[frame, positions][None]
        merged, counts, kept_positions = _clustered(x, positions[None], num_centers, params)
        frame_index = torch.full((num_centers,), frame, dtype=torch.long, device=tokens.device)
        groups.append(_TokenGroup(merged[0], counts[0], frame_index, frame_index, kept_positions[0]))
    return _concat(groups)


def holitom(tokens: torch.Tensor, attention: torch.Tensor, params: HoliTomParams = HoliTomParams()) -> HoliTomOutput:
    """Outer-LLM HoliTom over one video's token grid.

    Args:
        tokens: ``[T, N, D]`` patch tokens of ``T`` frames in time order.
        attention: ``[T, N]`` per-token importance (CLIP's last-layer CLS-to-patch attention).
        params: hyper-parameters.
    Returns:
        :class:`HoliTomOutput`; with ``retain_ratio=1`` every token survives (static ones as exact
        window means), and with no static positions at all the output is the input, token for token.
    """
    frames, num_positions, _ = tokens.shape
    device = tokens.device
    runs = static_run_lengths(consecutive_similarity(tokens), params.tau)
    segmentation = segment_windows(runs, params.max_window)
    ratio = adjusted_retain_ratio(params.retain_ratio, frames * num_positions, segmentation.total_reduced)

    static = torch.zeros(frames, num_positions, dtype=torch.bool, device=device)  # per frame
    dominant_counts = torch.zeros(frames, dtype=torch.long, device=device)
    contextual_counts: list[int] = []
    groups: list[_TokenGroup] = []
    for start, end in segmentation.windows:
        if end > start:
            static[start : end + 1] = runs[start] >= end - start
    num_static = [int(static[start].sum()) for start, _ in segmentation.windows]
    window_tokens = torch.tensor(
        [n + (end - start + 1) * (num_positions - n) for (start, end), n in zip(segmentation.windows, num_static)]
    )
    window_kept = video_budget(window_tokens, params.retain_ratio, frames * num_positions)
    for (start, end), n, kept_count in zip(segmentation.windows, num_static, window_kept.tolist()):
        budget = window_budget(kept_count, n, num_positions - n, end - start + 1, ratio, params.contextual_ratio)
        group = _static_group(tokens, static[start], (start, end), budget.static, params)
        if group is not None:
            groups.append(group)
        dominant_counts[start : end + 1] = budget.dominant
        contextual_counts.append(budget.contextual)

    kept = select_dominant(attention, ~static, dominant_counts)
    frame_index, position_index = kept.nonzero(as_tuple=True)
    groups.append(
        _TokenGroup(
            tokens=tokens[frame_index, position_index].float(),
            sizes=torch.ones_like(frame_index),
            frame_start=frame_index,
            frame_end=frame_index,
            positions=position_index,
        )
    )
    for window, num_centers in zip(segmentation.windows, contextual_counts):
        if num_centers > 0:
            rest = ~static[window[0] : window[1] + 1] & ~kept[window[0] : window[1] + 1]
            groups.append(_contextual_group(tokens, rest, window, num_centers, params))

    kept_tokens = _concat(groups)
    order = torch.argsort(kept_tokens.frame_start * num_positions + kept_tokens.positions)
    return HoliTomOutput(
        tokens=kept_tokens.tokens[order],
        sizes=kept_tokens.sizes[order],
        frame_start=kept_tokens.frame_start[order],
        frame_end=kept_tokens.frame_end[order],
        positions=kept_tokens.positions[order],
        segmentation=segmentation,
        retain_ratio=ratio,
    )


# ----- inner-LLM merging -----------------------------------------------------------------------


def inner_llm_merge(hidden: torch.Tensor, attention: torch.Tensor, merge_ratio: float) -> InnerMergeOutput:
    """HoliTom's inner-LLM step over a span of visual tokens (reference ``Qwen2Model_holitom.forward``
    at layer ``HOLITOM_k``, ratio ``HOLITOM_r``).

    Keeps the ``round(L * (1 - merge_ratio))`` tokens with the highest attention (in the reference, the
    last text token's attention at the previous layer, averaged over heads). Every other token, in
    index order, is folded into its most cosine-similar kept token (similarities taken before any
    merging) by the reference's in-place running average ``kept = (kept + other) / 2``. That loop is
    computed in closed form: a kept token that receives ``c`` tokens ``o_1 < ... < o_c`` becomes
    ``kept / 2**c + sum_j o_j / 2**(c - j + 1)``.

    Args:
        hidden: ``[B, L, D]`` hidden states of the visual span.
        attention: ``[B, L]`` attention each token receives.
        merge_ratio: fraction ``r`` of the span to fold away.
    Returns:
        :class:`InnerMergeOutput`; ``kept`` indexes the span, so rotary positions can stay the originals.
    """
    batch, length, dim = hidden.shape
    keep = round(length * (1 - merge_ratio))
    if not 0 < keep <= length:
        raise ValueError(f"merge_ratio {merge_ratio} keeps {keep} of {length} tokens")
    kept = attention.topk(keep, dim=1).indices.sort(dim=1).values
    is_kept = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device).scatter_(1, kept, True)
    kept_states = hidden.gather(1, kept[..., None].expand(batch, keep, dim))
    if keep == length:
        return InnerMergeOutput(hidden=kept_states, kept=kept)
    others = (~is_kept).nonzero()[:, 1].view(batch, length - keep)  # ascending per row
    other_states = hidden.gather(1, others[..., None].expand(batch, length - keep, dim))
    similarity = F.normalize(other_states.float(), dim=-1) @ F.normalize(kept_states.float(), dim=-1).transpose(1, 2)
    target = similarity.argmax(dim=-1)  # [B, L - K] slot in `kept`
    onehot = F.one_hot(target, keep)  # [B, L - K, K]
    rank = (onehot.cumsum(dim=1) * onehot).sum(dim=-1)  # 1-based order of arrival at the target
    received = onehot.sum(dim=1)  # [B, K]
    arrivals_after = received.gather(1, target) - rank + 1
    weights = torch.exp2(-arrivals_after.to(hidden.dtype))[..., None]
    merged = kept_states * torch.exp2(-received.to(hidden.dtype))[..., None]
    merged = merged.scatter_add(1, target[..., None].expand(-1, -1, dim), other_states * weights)
    return InnerMergeOutput(hidden=merged, kept=kept)


def video_summary(
    patch_tokens: torch.Tensor, cls_attention: torch.Tensor | None, frame_times: torch.Tensor, code_vectors: str = "unit",
    **params: object,
) -> VideoSummary:
    """:func:`holitom` as a summarizer (``models.registry.SUMMARIZERS["holitom"]``, called by
    :func:`models.summary.summarize`): ``[T, N, W]`` tokens, ``[T, N]`` attention, ``[T]`` float64 frame
    times -> a CPU :class:`~models.summary.VideoSummary`. ``code_vectors`` is VQToken's and plays no part."""
    frames, num_patches, _ = patch_tokens.shape
    if cls_attention is None or tuple(cls_attention.shape) != (frames, num_patches):
        raise ValueError(f"holitom needs cls_attention [{frames}, {num_patches}]")
    hp = HoliTomParams(**params)  # type: ignore[arg-type]
    out = holitom(patch_tokens, cls_attention, hp)
    return VideoSummary(
        tokens=out.tokens.float().cpu(),
        sizes=out.sizes.cpu(),
        frame_start=out.frame_start.cpu(),
        frame_end=out.frame_end.cpu(),
        positions=out.positions.cpu(),
        frame_times=frame_times,
        num_patches=num_patches,
        method="holitom",
        params=asdict(hp),
    )
