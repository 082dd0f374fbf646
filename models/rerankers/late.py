"""Late interaction: rescore a first-stage hit with the video's compressed summary tokens.

A :class:`~models.summary.VideoSummary` holds ``M`` tokens in the CLIP ViT's hidden space (HoliTom
merged/kept tokens or VQToken codes), each standing for some of the video's original ``(frame, patch)``
tokens. At query time they are pushed through ``ln_post`` and ``proj`` (``ClipBackbone.project``) into
CLIP's joint space, where they meet the query's text embedding -- the same late interaction ColBERT
does with one query vector (MaxSim), over tokens that were compressed at ingestion instead of re-decoded.

Which tokens count is decided B-VLLM-style (``models.bvllm``; Lu et al., github.com/zhuqiangLu/B-VLLM,
``BVLMMetaForCausalLM.vlm_attention``): the frames are scored against the text and the top
``num_frames`` (B-VLLM's 16 temporal queries) are kept with :func:`models.bvllm.select_frames`; only
tokens that cover a kept frame take part. B-VLLM scores frames with the frame CLS token; a summary has
no CLS, so a frame's relevance is the size-weighted mean text similarity of the tokens covering it
(:func:`frame_relevance`) -- linear in the tokens, so it costs one scatter per video.

The matched moment is refined from the tokens themselves: the best tokens' frame coverage (HoliTom
frame ranges, or VQToken's index map) gives a run of frames around the best token's strongest
selected frame, and that run's time range becomes the hit's start/end (:func:`refine_moment`).

Everything here is training-free. The combination ``(1 - weight) * first_stage + weight * late`` is a
plain convex mix of two cosines; its weight is not calibrated (no pretrained evaluation offline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.bvllm import BVLLM_NUM_FRAMES, select_frames
from models.summary import VideoSummary

Projector = Callable[[torch.Tensor], torch.Tensor]  # hidden [..., W] -> joint space [..., E]


@dataclass(frozen=True)
class LateParams:
    """Knobs of late-interaction reranking.

    Attributes:
        num_frames: frames kept for the text (B-VLLM's 16 temporal queries).
        weight: share of the late score in the combined score, in ``[0, 1]``.
        moment_tokens: best counted tokens whose contiguous frame coverage becomes the moment.
    """

    num_frames: int = BVLLM_NUM_FRAMES
    weight: float = 0.5
    moment_tokens: int = 3

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if self.moment_tokens < 1:
            raise ValueError(f"moment_tokens must be >= 1, got {self.moment_tokens}")


@dataclass(frozen=True)
class Coverage:
    """Which frames each summary token stands for, as a sparse ``[T, M]`` matrix in COO form.

    Entry ``p`` says that token ``token[p]`` stands for ``weight[p]`` original patch tokens of frame
    ``frame[p]`` (entries may repeat; they add up).

    Attributes:
        frame: ``[P]`` long frame index.
        token: ``[P]`` long token index (row of ``VideoSummary.tokens``).
        weight: ``[P]`` float patch tokens of that frame the token stands for.
        num_frames: ``T``.
        num_tokens: ``M``.
    """

    frame: torch.Tensor
    token: torch.Tensor
    weight: torch.Tensor
    num_frames: int
    num_tokens: int


@dataclass(frozen=True)
class LateScore:
    """Late-interaction result for one video.

    Attributes:
        score: ``(1 - weight) * first_stage + weight * late``; the reranked order sorts by it.
        late: cosine of the text with the best counted token (MaxSim).
        frames: ``[L]`` selected frames, ascending.
        best_tokens: ``[k]`` the tokens the moment was built from, best first.
        start_frame, end_frame: inclusive frame range of the refined moment.
        start, end: the refined moment in seconds.
    """

    score: float
    late: float
    frames: torch.Tensor
    best_tokens: torch.Tensor
    start_frame: int
    end_frame: int
    start: float
    end: float


def coverage(summary: VideoSummary) -> Coverage:
    """The frames each token of ``summary`` stands for.

    VQToken (``index_map`` present): every original ``(frame, patch)`` token is one entry of weight 1
    pointing at its code. HoliTom (frame ranges): a token of size ``s`` spanning frames
    ``start..end`` stands for ``s / (end - start + 1)`` patch tokens of each of them (a static token's
    size is its cluster count times the window length, a kept dynamic token has size 1 on one frame).
    """
    frames, m = summary.num_frames, summary.num_tokens
    if summary.index_map is not None:
        n = summary.index_map.shape[1]
        frame = torch.arange(frames).repeat_interleave(n)
        token = summary.index_map.flatten().long()
        return Coverage(frame, token, torch.ones(frame.shape[0]), frames, m)
    span = summary.frame_end - summary.frame_start + 1
    token = torch.arange(m).repeat_interleave(span)
    first_entry = (span.cumsum(0) - span).repeat_interleave(span)
    frame = summary.frame_start.repeat_interleave(span) + torch.arange(token.shape[0]) - first_entry
    weight = (summary.sizes.float() / span.float()).repeat_interleave(span)
    return Coverage(frame, token, weight, frames, m)


def frame_relevance(cov: Coverage, token_scores: torch.Tensor) -> torch.Tensor:
    """Per-frame text relevance ``[T]``: the mean of ``token_scores`` ``[M]`` over the tokens covering
    each frame, weighted by how many of the frame's patch tokens each stands for; ``-inf`` for a frame
    no token covers (HoliTom prunes dynamic tokens, so this can happen)."""
    scores = token_scores.float()
    num = torch.zeros(cov.num_frames).index_add_(0, cov.frame, cov.weight * scores[cov.token])
    den = torch.zeros(cov.num_frames).index_add_(0, cov.frame, cov.weight)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), -torch.inf)


def tokens_in_frames(cov: Coverage, frames: torch.Tensor) -> torch.Tensor:
    """``[M]`` bool: tokens that stand for at least one patch token of the frames in the ``[T]`` bool mask."""
    counted = torch.zeros(cov.num_tokens, dtype=torch.bool)
    counted[cov.token[frames[cov.frame]]] = True
    return counted


def frames_of_tokens(cov: Coverage, tokens: torch.Tensor) -> torch.Tensor:
    """``[T]`` bool: frames covered by at least one token of the ``[M]`` bool mask."""
    covered = torch.zeros(cov.num_frames, dtype=torch.bool)
    covered[cov.frame[tokens[cov.token]]] = True
    return covered


def contiguous_run(mask: torch.Tensor, anchor: int) -> tuple[int, int]:
    """The maximal run of ``True`` in ``mask`` ``[T]`` that contains ``anchor`` (itself ``True``):
    inclusive ``(first, last)``."""
    if not bool(mask[anchor]):
        raise ValueError(f"frame {anchor} is not in the mask")
    gaps = (~mask).nonzero().squeeze(1)
    before, after = gaps[gaps < anchor], gaps[gaps > anchor]
    first = int(before[-1]) + 1 if before.numel() else 0
    last = int(after[0]) - 1 if after.numel() else mask.shape[0] - 1
    return first, last


def frame_range_seconds(frame_times: torch.Tensor, first: int, last: int, last_frame_seconds: float) -> tuple[float, float]:
    """Seconds of the inclusive frame range ``first..last``: a sampled frame lasts until the next one
    (static-frame dropping may leave gaps), the video's last frame ``last_frame_seconds``."""
    start = float(frame_times[first])
    end = float(frame_times[last + 1]) if last + 1 < frame_times.shape[0] else float(frame_times[last]) + last_frame_seconds
    return start, end


def refine_moment(
    cov: Coverage, token_scores: torch.Tensor, counted: torch.Tensor, selected: torch.Tensor, moment_tokens: int
) -> tuple[torch.Tensor, int, int]:
    """The frames of the best-matching tokens.

    The ``moment_tokens`` best counted tokens (by ``token_scores``, ties to the lower index) are taken; the anchor is the
    selected frame where the best of them stands for the most patch tokens (earliest on ties), and the
    moment is the run of consecutive frames around it covered by any of these tokens -- a HoliTom token's
    frame range, a VQToken code's frames from the index map, joined where the best tokens touch.

    Args:
        cov: the summary's :class:`Coverage`.
        token_scores: ``[M]`` text similarity of every token.
        counted: ``[M]`` bool, tokens that take part (at least one must).
        selected: ``[T]`` bool, frames selected for the text.
        moment_tokens: how many best tokens build the moment.
    Returns:
        ``(best_tokens [k]`` best first, ``first_frame, last_frame)``.
    """
    masked = token_scores.float().masked_fill(~counted, -torch.inf)
    # stable: equal scores go to the lower token index, so the moment is deterministic
    best = torch.sort(masked, descending=True, stable=True).indices[: min(moment_tokens, int(counted.sum()))]
    of_best = cov.token == best[0]
    strength = torch.zeros(cov.num_frames).index_add_(0, cov.frame[of_best], cov.weight[of_best])
    anchor = int(strength.masked_fill(~selected, -1.0).argmax())
    chosen = torch.zeros(cov.num_tokens, dtype=torch.bool)
    chosen[best] = True
    first, last = contiguous_run(frames_of_tokens(cov, chosen), anchor)
    return best, first, last


def project_summaries(tokens: Sequence[torch.Tensor], project: Projector) -> list[torch.Tensor]:
    """Summary tokens ``[M_i, W]`` of several videos -> L2-normalised joint-space tokens ``[M_i, E]``,
    projected in one call (``project`` is ``ClipBackbone.project``: ``ln_post`` then ``proj``)."""
    if not tokens:
        return []
    with torch.inference_mode():
        units = F.normalize(project(torch.cat(list(tokens))).float(), dim=-1)
    return list(units.split([t.shape[0] for t in tokens]))


def late_interaction(
    units: torch.Tensor,
    summary: VideoSummary,
    text: torch.Tensor,
    first_stage: float,
    params: LateParams,
    last_frame_seconds: float,
    cov: Coverage | None = None,
) -> LateScore:
    """Rescore one video for one text.

    Args:
        units: ``[M, E]`` the summary's tokens in the joint space, L2-normalised
            (:func:`project_summaries`); ``M >= 1``.
        summary: the summary they came from (sizes, frame ranges or index map, frame times).
        text: ``[E]`` L2-normalised text embedding.
        first_stage: the hit's first-stage (segment cosine) score.
        params: :class:`LateParams`.
        last_frame_seconds: how long the video's last sampled frame lasts (``1 / sample_fps``).
        cov: the summary's :class:`Coverage` if already computed.
    """
    if units.shape[0] != summary.num_tokens or summary.num_tokens == 0:
        raise ValueError(f"need one unit per summary token (>= 1), got {units.shape[0]} for {summary.num_tokens}")
    cov = cov if cov is not None else coverage(summary)
    token_scores = units @ text.to(units.dtype)
    selection = select_frames(frame_relevance(cov, token_scores), params.num_frames)
    selected = torch.zeros(cov.num_frames, dtype=torch.bool)
    selected[selection.indices] = True
    counted = tokens_in_frames(cov, selected)  # never empty: the best frame is covered by some token
    best, first, last = refine_moment(cov, token_scores, counted, selected, params.moment_tokens)
    late = float(token_scores[best[0]])
    start, end = frame_range_seconds(summary.frame_times, first, last, last_frame_seconds)
    return LateScore(
        score=(1.0 - params.weight) * first_stage + params.weight * late,
        late=late,
        frames=selection.indices,
        best_tokens=best,
        start_frame=first,
        end_frame=last,
        start=start,
        end=end,
    )
