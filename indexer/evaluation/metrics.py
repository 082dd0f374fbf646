"""Text-video retrieval metrics from a full similarity matrix, as CLIP4Clip and TempMe report them.

Pure numpy. The semantics are those of the evaluation code the papers' numbers come from:

* ``compute_metrics`` of CLIP4Clip (``metrics.py``, called from ``eval_epoch`` in
  ``main_task_retrieval.py``) and of TempMe (``tvr/utils/metrics.py``, called from ``eval_epoch``
  in ``main.py``): the query of row ``i`` is answered by column ``i``. Its rank is found by
  sorting the row and looking up where the sorted values equal the correct score, so a correct
  score *tied* with ``k`` others yields ``k + 1`` entries (every position the tie occupies) and
  all metrics are averaged over entries, not rows. :func:`compute_metrics` keeps that.
* CLIP4Clip's multi-sentence protocol (a video with several captions, e.g. MSR-VTT's JSON
  captions or MSVD): captions are grouped per video into ``[V, L, V]`` padded with ``-inf``
  (``eval_epoch``); text-to-video ranks come from ``tensor_text_to_video_metrics`` (a double
  argsort per caption slot, padding masked out) and video-to-text uses each video's best caption
  (``tensor_video_to_text_sim``: max over the caption slot) fed to ``compute_metrics``.

Recalls are percentages; ranks are 1-based.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RankMetrics:
    """Recall at 1/5/10 (percent), median and mean rank (1-based), over ``count`` rank entries."""

    r1: float
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Both directions and ``rsum``: R@1 + R@5 + R@10 of text-to-video plus those of video-to-text."""

    text_to_video: RankMetrics
    video_to_text: RankMetrics
    multi_sentence: bool

    @property
    def rsum(self) -> float:
        return sum(m.r1 + m.r5 + m.r10 for m in (self.text_to_video, self.video_to_text))

    def as_dict(self) -> dict[str, object]:
        return {
            "text_to_video": self.text_to_video.as_dict(),
            "video_to_text": self.video_to_text.as_dict(),
            "rsum": self.rsum,
            "multi_sentence": self.multi_sentence,
        }


def _recalls(ranks: np.ndarray, median_rank: float) -> RankMetrics:
    """0-based ``ranks [n]`` -> :class:`RankMetrics` (``median_rank`` is passed in: the two
    reference functions take the median differently)."""
    if ranks.size == 0:
        raise ValueError("no valid rank: every correct score is missing or not finite")
    return RankMetrics(
        r1=100.0 * float(np.mean(ranks < 1)),
        r5=100.0 * float(np.mean(ranks < 5)),
        r10=100.0 * float(np.mean(ranks < 10)),
        median_rank=median_rank,
        mean_rank=float(np.mean(ranks)) + 1.0,
        count=int(ranks.size),
    )


def diagonal_ranks(sim: np.ndarray) -> np.ndarray:
    """The rank entries ``compute_metrics`` derives from a square ``[N, N]`` matrix, 0-based.

    Row ``i`` (correct column ``i``, score ``d``) contributes ``g, g + 1, .., g + e - 1`` where
    ``g`` counts the scores strictly above ``d`` and ``e`` those equal to it (``d`` itself
    included): the positions ``d`` occupies in the row sorted high to low. A row whose ``d`` is
    not finite contributes nothing (the reference's ``sorted - d == 0`` is never true then).
    Returns int64 ``[M]`` in row order, ``M >= N`` when there are ties.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square [N, N] matrix, got {sim.shape}")
    d = np.diag(sim)[:, None]
    above = np.sum(sim > d, axis=1)
    equal = np.sum(sim == d, axis=1)
    equal[~np.isfinite(d[:, 0])] = 0
    return np.concatenate([np.arange(g, g + e) for g, e in zip(above, equal)]).astype(np.int64)


def compute_metrics(sim: np.ndarray) -> RankMetrics:
    """CLIP4Clip/TempMe ``compute_metrics``: ``sim [N, N]``, query ``i`` matches item ``i``.

    Used on ``sim`` for text-to-video and on ``sim.T`` for video-to-text. The median is numpy's
    (mean of the two middle entries for an even count).
    """
    ranks = diagonal_ranks(sim)
    return _recalls(ranks, float(np.median(ranks)) + 1.0 if ranks.size else float("nan"))


def group_by_video(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """Captions x videos ``[Q, V]`` -> ``[V, L, V]``: the rows of video ``v``'s captions (in their
    original order) at ``[v, :n_v]``, padded with ``-inf`` to ``L = max n_v`` (CLIP4Clip's
    ``eval_epoch`` reshape, which relies on the captions of a video being contiguous; here
    they are gathered by ``caption_video [Q]``, the video index of each caption).
    """
    sim = np.asarray(sim, dtype=np.float64)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    q, v = sim.shape
    if caption_video.shape != (q,):
        raise ValueError(f"caption_video must be [{q}], got {caption_video.shape}")
    counts = np.bincount(caption_video, minlength=v)
    if counts.shape[0] != v or np.any(counts == 0):
        raise ValueError("every video needs at least one caption and every caption a video in [0, V)")
    order = np.argsort(caption_video, kind="stable")
    slot = np.arange(q) - np.repeat(np.cumsum(counts) - counts, counts)
    grouped = np.full((v, int(counts.max()), v), -np.inf)
    grouped[caption_video[order], slot] = sim[order]
    return grouped


def text_to_video_metrics(grouped: np.ndarray) -> RankMetrics:
    """CLIP4Clip ``tensor_text_to_video_metrics`` over ``grouped [V, L, V]`` (:func:`group_by_video`).

    The rank of caption ``(v, l)`` is the position of column ``v`` when its row is sorted high
    to low; slots whose correct score is not finite (the ``-inf`` padding) are dropped.

    One deviation, on ties only: the reference sorts with ``torch.argsort`` (not stable, so the
    order of tied scores is unspecified); here the sort is stable, a tied column with a lower
    index ranks first. The median is the reference's ``torch.median``: the lower of the two
    middle entries.
    """
    grouped = np.asarray(grouped, dtype=np.float64)
    if grouped.ndim != 3 or grouped.shape[0] != grouped.shape[2]:
        raise ValueError(f"expected [V, L, V], got {grouped.shape}")
    rows = grouped.transpose(1, 0, 2)  # [L, V, V]: slot l of every video's captions
    order = np.argsort(-rows, axis=-1, kind="stable")
    position = np.argsort(order, axis=-1, kind="stable")
    ranks = np.diagonal(position, axis1=1, axis2=2).reshape(-1)  # [L * V], slot-major like the reference
    correct = np.diagonal(rows, axis1=1, axis2=2).reshape(-1)
    valid = np.sort(ranks[np.isfinite(correct)])
    lower_median = float(valid[(valid.size - 1) // 2]) + 1.0 if valid.size else float("nan")
    return _recalls(valid, lower_median)


def video_to_text_sim(grouped: np.ndarray) -> np.ndarray:
    """CLIP4Clip ``tensor_video_to_text_sim``: ``[V, L, V]`` -> ``[V, V]`` whose entry ``[j, i]``
    is the best score of any caption of video ``i`` against video ``j`` (NaN read as ``-inf``)."""
    grouped = np.where(np.isnan(grouped), -np.inf, np.asarray(grouped, dtype=np.float64))
    return grouped.max(axis=1).T


def retrieval_metrics(sim: np.ndarray, caption_video: np.ndarray) -> RetrievalMetrics:
    """Text-to-video and video-to-text metrics of ``sim [Q, V]`` (caption ``q`` describes video
    ``caption_video[q]``), the way CLIP4Clip evaluates.

    One caption per video (MSR-VTT 1k-A): rows are put in video order and
    :func:`compute_metrics` runs on ``sim`` and ``sim.T``. Otherwise the multi-sentence
    protocol: :func:`text_to_video_metrics` and ``compute_metrics(video_to_text_sim(...))``.
    """
    sim = np.asarray(sim, dtype=np.float64)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if sim.ndim != 2:
        raise ValueError(f"expected [Q, V] similarities, got {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("similarities must be finite")
    q, v = sim.shape
    if q == v and np.array_equal(np.sort(caption_video), np.arange(v)):
        square = sim[np.argsort(caption_video)]
        return RetrievalMetrics(compute_metrics(square), compute_metrics(square.T), multi_sentence=False)
    grouped = group_by_video(sim, caption_video)
    return RetrievalMetrics(
        text_to_video_metrics(grouped), compute_metrics(video_to_text_sim(grouped)), multi_sentence=True
    )
