"""Late interaction: rescore a first-stage hit with the video's compressed summary tokens.

A :class:`~models.summary.VideoSummary` holds ``M`` tokens in the CLIP ViT's hidden space (HoliTom
merged/kept tokens or VQToken codes), each standing for some of the video's original ``(frame, patch)``
tokens. At query time they are pushed through ``ln_post`` and ``proj`` (``ClipBackbone.project``) into
CLIP's joint space, where they meet the query's text embedding -- the same late interaction ColBERT
does with one query vector (MaxSim), over tokens that were compressed at ingestion instead of re-decoded.

Which tokens count is decided B-VLLM-style (``models.bvllm``; Lu et al., github.com/zhuqiangLu/B-VLLM,
``BVLMMetaForCausalLM.vlm_attention``): the frames are scored against the text and the top
``num_frames`` (B-VLLM's 16 temporal queries) are kept by :func:`models.bvllm.select_frames`
(deterministic top-L, ties to the earlier frame); only tokens that cover a kept frame take part. B-VLLM
scores frames with the frame CLS token; a summary has no CLS, so a frame's relevance is the size-weighted
mean text similarity of the tokens covering it (:func:`frame_relevance`) -- linear in the tokens, so it
costs one scatter.

The matched moment is refined from the tokens themselves: the best tokens' frame coverage (HoliTom
frame ranges, or VQToken's index map) gives a run of frames around the best token's strongest
selected frame, and that run's time range becomes the hit's start/end.

A query reranks up to ``rerank_k`` videos, so the candidates are packed end to end (:func:`pack`) and
scored in one pass of tensor operations (:func:`late_interaction_batch`): per-video top-L and
contiguous runs become ranks within groups (:func:`models.bvllm.group_ranks`, :func:`run_around`). This is what
keeps 50 candidates within a few milliseconds; :func:`late_interaction` is the batch of one.

Everything here is training-free. The combination ``(1 - weight) * first_stage + weight * late`` is a
plain convex mix of two cosines; its weight is not calibrated (no pretrained evaluation offline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.bvllm import BVLLM_NUM_FRAMES, group_ranks, select_frames
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


def run_around(mask: torch.Tensor, anchor: torch.Tensor, group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximal run of ``True`` in ``mask`` ``[n]`` around each group's ``anchor``, runs not crossing
    group boundaries.

    Args:
        mask: ``[n]`` bool.
        anchor: ``[G]`` long position inside each group, where ``mask`` is True.
        group: ``[n]`` long, ascending (groups are contiguous).
    Returns:
        ``(first [G], last [G])`` inclusive positions.
    """
    index = torch.arange(mask.shape[0])
    group_start = torch.ones_like(mask)
    group_start[1:] = group[1:] != group[:-1]
    after_gap = torch.ones_like(mask)
    after_gap[1:] = ~mask[:-1]
    run = (mask & (group_start | after_gap)).cumsum(0)  # run number of every masked position
    inside = mask & (run == run[anchor][group])
    first = torch.full((num_groups,), mask.shape[0]).scatter_reduce(0, group[inside], index[inside], reduce="amin")
    last = torch.full((num_groups,), -1).scatter_reduce(0, group[inside], index[inside], reduce="amax")
    return first, last


@dataclass(frozen=True)
class PackedSummaries:
    """Several videos' summaries laid end to end, so a query scores all of them in one pass.

    Tokens and frames are numbered globally (video ``v``'s start at ``token_offset[v]`` / ``frame_offset[v]``).

    Attributes:
        units: ``[sum M, E]`` L2-normalised joint-space tokens.
        token_video: ``[sum M]`` long video of each token.
        frame_video: ``[sum T]`` long video of each frame.
        token_offset, frame_offset: ``[V]`` long first global token / frame of each video.
        frame_start, frame_end: ``[sum T]`` float64 seconds each frame covers (until the next frame of its
            video; the last one ``last_frame_seconds``).
        coverage: the videos' :class:`Coverage` in global numbering.
    """

    units: torch.Tensor
    token_video: torch.Tensor
    frame_video: torch.Tensor
    token_offset: torch.Tensor
    frame_offset: torch.Tensor
    frame_start: torch.Tensor
    frame_end: torch.Tensor
    coverage: Coverage

    @property
    def num_videos(self) -> int:
        return int(self.token_offset.shape[0])


def pack(units: Sequence[torch.Tensor], summaries: Sequence[VideoSummary], coverages: Sequence[Coverage],
         last_frame_seconds: float) -> PackedSummaries:
    """Lay ``V >= 1`` videos end to end: their joint-space tokens ``[M_v, E]`` (``M_v >= 1``), summaries and
    coverages (:func:`coverage`); ``last_frame_seconds`` is how long a video's last sampled frame lasts."""
    for u, s in zip(units, summaries):
        if u.shape[0] != s.num_tokens or s.num_tokens == 0:
            raise ValueError(f"need one unit per summary token (>= 1), got {u.shape[0]} for {s.num_tokens}")
    videos = torch.arange(len(summaries))
    m = torch.tensor([s.num_tokens for s in summaries])
    t = torch.tensor([s.num_frames for s in summaries])
    entries = torch.tensor([c.frame.shape[0] for c in coverages])
    token_offset, frame_offset = m.cumsum(0) - m, t.cumsum(0) - t
    frame_video = videos.repeat_interleave(t)
    start = torch.cat([s.frame_times for s in summaries]).double()
    last = torch.arange(start.shape[0]) == (frame_offset + t - 1)[frame_video]
    end = torch.where(last, start + last_frame_seconds, start.roll(-1))
    cov = Coverage(
        frame=torch.cat([c.frame for c in coverages]) + frame_offset.repeat_interleave(entries),
        token=torch.cat([c.token for c in coverages]) + token_offset.repeat_interleave(entries),
        weight=torch.cat([c.weight for c in coverages]),
        num_frames=int(t.sum()),
        num_tokens=int(m.sum()),
    )
    return PackedSummaries(torch.cat(list(units)).float(), videos.repeat_interleave(m), frame_video, token_offset,
                           frame_offset, start, end, cov)


def project_summaries(tokens: Sequence[torch.Tensor], project: Projector) -> list[torch.Tensor]:
    """Summary tokens ``[M_i, W]`` of several videos -> L2-normalised joint-space tokens ``[M_i, E]``,
    projected in one call (``project`` is ``ClipBackbone.project``: ``ln_post`` then ``proj``)."""
    if not tokens:
        return []
    with torch.inference_mode():
        units = F.normalize(project(torch.cat(list(tokens))).float(), dim=-1)
    return list(units.split([t.shape[0] for t in tokens]))


def late_interaction_batch(packed: PackedSummaries, text: torch.Tensor, first_stage: Sequence[float],
                           params: LateParams) -> list[LateScore]:
    """Rescore every packed video for one text.

    Per video: tokens are scored against the text; frames are ranked by :func:`frame_relevance` and the
    top ``num_frames`` kept (:func:`models.bvllm.select_frames`, ties to the earlier frame); tokens
    covering a kept frame count (never none: the best frame is covered); the late score is the best
    counted token's (MaxSim). The moment: the ``moment_tokens`` best counted tokens (ties to the lower
    index); the anchor is the kept frame where the best of them stands for the most patch tokens (earliest
    on ties); the moment is the run of consecutive frames around it covered by any of these tokens -- a
    HoliTom token's frame range, a VQToken code's frames from the index map, joined where they touch.

    Args:
        packed: the candidates (:func:`pack`).
        text: ``[E]`` L2-normalised text embedding.
        first_stage: each video's first-stage (segment cosine) score.
        params: :class:`LateParams`.
    """
    v, cov = packed.num_videos, packed.coverage
    scores = packed.units @ text.to(packed.units.dtype)
    selected = select_frames(frame_relevance(cov, scores), params.num_frames, packed.frame_video, v)
    counted = tokens_in_frames(cov, selected)
    token_rank = group_ranks(scores.masked_fill(~counted, -torch.inf), packed.token_video, v)
    chosen = counted & (token_rank < params.moment_tokens)
    best = torch.zeros(v, dtype=torch.long)
    best[packed.token_video[token_rank == 0]] = (token_rank == 0).nonzero().squeeze(1)
    of_best = token_rank[cov.token] == 0
    strength = torch.zeros(cov.num_frames).index_add_(0, cov.frame[of_best], cov.weight[of_best])
    anchor_mask = group_ranks(strength.masked_fill(~selected, -1.0), packed.frame_video, v) == 0
    anchor = torch.zeros(v, dtype=torch.long)
    anchor[packed.frame_video[anchor_mask]] = anchor_mask.nonzero().squeeze(1)
    first, last = run_around(frames_of_tokens(cov, chosen), anchor, packed.frame_video, v)

    late = scores[best].tolist()
    frames = (selected.nonzero().squeeze(1) - packed.frame_offset[packed.frame_video[selected]]).split(
        torch.bincount(packed.frame_video[selected], minlength=v).tolist())
    picked = chosen.nonzero().squeeze(1)
    picked = picked[torch.sort(token_rank[picked], stable=True).indices]
    picked = picked[torch.sort(packed.token_video[picked], stable=True).indices]  # by video, best first
    best_tokens = (picked - packed.token_offset[packed.token_video[picked]]).split(
        torch.bincount(packed.token_video[picked], minlength=v).tolist())
    starts, ends = packed.frame_start[first].tolist(), packed.frame_end[last].tolist()
    first_local, last_local = (first - packed.frame_offset).tolist(), (last - packed.frame_offset).tolist()
    return [
        LateScore(
            score=(1.0 - params.weight) * first_stage[i] + params.weight * late[i],
            late=late[i],
            frames=frames[i],
            best_tokens=best_tokens[i],
            start_frame=first_local[i],
            end_frame=last_local[i],
            start=starts[i],
            end=ends[i],
        )
        for i in range(v)
    ]


def late_interaction(
    units: torch.Tensor,
    summary: VideoSummary,
    text: torch.Tensor,
    first_stage: float,
    params: LateParams,
    last_frame_seconds: float,
) -> LateScore:
    """:func:`late_interaction_batch` for one video: ``units`` ``[M, E]`` its L2-normalised joint-space
    tokens (:func:`project_summaries`), ``summary`` the summary they came from."""
    packed = pack([units], [summary], [coverage(summary)], last_frame_seconds)
    return late_interaction_batch(packed, text, [first_stage], params)[0]
