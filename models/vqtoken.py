"""VQToken: a video as a small codebook of K-means codes plus a token hash (index map).

Follows Zhang & Fu, "VQToken: Neural Discrete Token Representation Learning for Extreme Token
Reduction in Video Large Language Models" (NeurIPS 2025, arXiv 2503.16980) and its official code
(github.com/Hai-chao-Zhang/VQToken): ``VQToken/cluster.py`` (``KMeansTorch``, ``AdaptiveKMeansTorch``)
and ``VQToken/vq_token.py`` (``adaptive_kmeans_clustering_tokens_torch``,
``kmeans_clustering_tokens_torch``). All ``T * N`` tokens of a video are L2-normalised and clustered
with K-means (k-means++ init, cosine assignment, mean update); the codebook ``B`` (``K x D``) holds
the per-cluster means of the normalised tokens and the index map ``M`` (``T x N``) records which code
each ``(frame, position)`` token went to, so a matched code can be located in time. The learned
VQ-Attention that fuses ``B`` and ``M`` inside the LLM is not part of this module (it needs the
trained LLaVA-OneVision weights).

Deviations from the reference, all deliberate:

* Adaptive K: the reference's elbow (first release) takes ``argmax`` of the second difference of the
  distortion over ``K = 12..max_K`` but maps the index to ``argmax + 4`` and clamps to 12, so with its
  ``max_K = 32`` it can never return a K above 22 and mostly returns 12. Here the index maps to the K
  it was computed at. (A later upstream revision switched to a max-distance-to-chord knee on cosine
  distortion; this module keeps the paper/first-release rule: maximal second difference of the
  squared-error distortion.)
* The reference refits K-means with a fresh random start after choosing K; here the chosen
  candidate's fit is reused, so the returned clustering is the one the elbow judged.
* The reference's fixed-K entry point constructs ``KMeansTorch`` with wrong keyword names and
  crashes; :func:`vqtoken` with ``num_codes`` set runs the same K-means with the given K.
* A video with fewer tokens than K (or than the elbow's ``k_min + 2``) gets ``K = min(K, T * N)``
  (``k_min`` in adaptive mode) instead of failing, so a very short clip still gets a summary.
* Codes are renumbered by first occurrence in (frame, position) order and empty clusters are
  dropped (the reference keeps them as all-zero codes), so every code stands for at least one token.
* Every K-means run uses its own ``torch.Generator`` seeded with ``seed``: results are reproducible
  and a given K gives the same clustering whatever other K are tried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from models.summary import NO_POSITION, VideoSummary

# k-means++ adds this to the squared distances so the sampling weights never sum to zero
# (reference ``KMeansTorch.sample_init_centroids``).
_KMEANS_PP_EPS = 1e-6


@dataclass(frozen=True)
class VQTokenParams:
    """VQToken hyper-parameters (reference defaults).

    Attributes:
        num_codes: fixed K, or None to choose K by the elbow over ``k_min..k_max`` (the reference's
            fixed mode uses K=32, its adaptive mode ``max_K=32`` with ``K >= 12``).
        k_min: smallest K tried in adaptive mode.
        k_max: largest K tried in adaptive mode.
        max_iter: K-means iterations at most (``AdaptiveKMeansTorch.max_iteration`` = 100).
        tol: stop once the Frobenius norm of the centroid update is ``<= tol`` (1e-4).
        seed: seed of the k-means++ initialisation.
    """

    num_codes: int | None = None
    k_min: int = 12
    k_max: int = 32
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_codes is not None and self.num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {self.num_codes}")
        if not 1 <= self.k_min <= self.k_max - 2:
            raise ValueError(f"adaptive K needs 1 <= k_min <= k_max - 2, got {self.k_min}..{self.k_max}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class KMeansResult:
    """One K-means fit on ``P`` points.

    Attributes:
        labels: ``[P]`` cluster of each point.
        centroids: ``[K, D]`` final centroids (means of their points; an emptied cluster keeps its
            previous centroid).
        distortion: sum of squared Euclidean distances of the points to their centroids.
        iterations: assignment/update rounds run.
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    distortion: float
    iterations: int


@dataclass(frozen=True)
class VQTokenOutput:
    """A video's discrete token representation.

    Attributes:
        codebook: ``[K, D]`` per-code means of the L2-normalised tokens (paper: ``B_k = mean_{i in s_k} t_i``).
        index_map: ``[T, N]`` code of every ``(frame, position)`` token (the paper's token hash ``M``).
        counts: ``[K]`` tokens per code (sums to ``T * N``).
        num_clusters: the K that K-means ran with (``>= K`` codes kept; empty clusters are dropped).
        candidates: the K values tried (empty in fixed-K mode and for videos too short for the elbow).
        distortions: their distortions, same order.
    """

    codebook: torch.Tensor
    index_map: torch.Tensor
    counts: torch.Tensor
    num_clusters: int
    candidates: tuple[int, ...]
    distortions: tuple[float, ...]


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ initial centroids: the first point uniformly at random, each next one with
    probability proportional to its squared Euclidean distance to the nearest chosen centroid.

    Args:
        x: ``[P, D]`` points.
        k: number of centroids, ``<= P``.
    Returns:
        ``[k, D]``.
    """
    points = x.shape[0]
    chosen = [int(torch.randint(points, (1,), generator=generator, device=x.device))]
    closest = (x - x[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        weights = closest + _KMEANS_PP_EPS
        chosen.append(int(torch.multinomial(weights / weights.sum(), 1, generator=generator)))
        closest = torch.minimum(closest, (x - x[chosen[-1]]).square().sum(dim=1))
    return x[chosen]


def assign_cosine(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid by cosine distance ``1 - cos``: ``[P, D], [K, D]`` -> ``[P]``."""
    return (F.normalize(x, dim=-1) @ F.normalize(centroids, dim=-1).T).argmax(dim=1)


def cluster_means(x: torch.Tensor, labels: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Mean of the points of each cluster ``[K, D]``; a cluster without points keeps ``fallback``."""
    k = fallback.shape[0]
    sums = torch.zeros_like(fallback).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(x.dtype), fallback)


def spherical_kmeans(x: torch.Tensor, k: int, max_iter: int = 100, tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    """K-means with cosine assignment and mean update (reference ``KMeansTorch.fit``).

    Args:
        x: ``[P, D]`` points (VQToken passes L2-normalised tokens).
        k: clusters, ``1 <= k <= P``.
    """
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"cannot make {k} clusters from {x.shape[0]} points")
    x = x.float()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centroids = kmeans_plus_plus(x, k, generator)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        updated = cluster_means(x, assign_cosine(x, centroids), centroids)
        shift = torch.linalg.vector_norm(updated - centroids)
        centroids = updated
        if shift <= tol:
            break
    labels = assign_cosine(x, centroids)
    distortion = float((x - centroids[labels]).square().sum())
    return KMeansResult(labels=labels, centroids=centroids, distortion=distortion, iterations=iterations)


def elbow(candidates: Sequence[int], distortions: Sequence[float]) -> int:
    """The K where the distortion curve bends most: maximal second difference
    ``d[K-1] - 2 d[K] + d[K+1]`` over the interior candidates (first maximum on ties).

    Args:
        candidates: consecutive K values, at least 3.
        distortions: distortion at each K.
    """
    if len(candidates) < 3 or len(candidates) != len(distortions):
        raise ValueError("the elbow needs at least 3 (K, distortion) pairs")
    d = torch.tensor(list(distortions), dtype=torch.float64)
    second = d[:-2] - 2 * d[1:-1] + d[2:]
    return int(candidates[int(second.argmax()) + 1])


def canonical_codes(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber cluster ids ``[P]`` (``0..k-1``) by first occurrence and drop the empty ones.

    Returns:
        ``(codes [P]`` in ``0..K'-1``, ``kept [K']`` the old id of each new code).
    """
    points = labels.shape[0]
    first = torch.full((k,), points, dtype=torch.long, device=labels.device)
    first = first.scatter_reduce(0, labels, torch.arange(points, device=labels.device), reduce="amin")
    kept = torch.argsort(first)[: int((first < points).sum())]
    renumber = torch.empty(k, dtype=torch.long, device=labels.device)
    renumber[kept] = torch.arange(kept.numel(), device=labels.device)
    return renumber[labels], kept


def vqtoken(tokens: torch.Tensor, params: VQTokenParams = VQTokenParams()) -> VQTokenOutput:
    """Cluster all of a video's tokens into a codebook and an index map.

    Args:
        tokens: ``[T, N, D]`` patch tokens.
        params: hyper-parameters; ``num_codes=None`` picks K by :func:`elbow` over
            ``k_min..min(k_max, T * N)``. With fewer than ``K`` tokens (fixed mode) or than
            ``k_min + 2`` (adaptive mode), K is ``min(K or k_min, T * N)``.
    """
    frames, positions, dim = tokens.shape
    x = F.normalize(tokens.reshape(frames * positions, dim).float(), dim=-1)
    points = x.shape[0]
    candidates: tuple[int, ...] = ()
    distortions: tuple[float, ...] = ()
    if params.num_codes is not None or points < params.k_min + 2:
        # A video with fewer tokens than K (or than the elbow needs) gets at most one code per token;
        # the reference fails on such videos.
        k = min(params.num_codes if params.num_codes is not None else params.k_min, points)
        fit = spherical_kmeans(x, k, params.max_iter, params.tol, params.seed)
    else:
        candidates = tuple(range(params.k_min, min(params.k_max, points) + 1))
        fits = {k: spherical_kmeans(x, k, params.max_iter, params.tol, params.seed) for k in candidates}
        distortions = tuple(fits[k].distortion for k in candidates)
        fit = fits[elbow(candidates, distortions)]
    codes, kept = canonical_codes(fit.labels, fit.centroids.shape[0])
    codebook = cluster_means(x, codes, fit.centroids[kept])
    return VQTokenOutput(
        codebook=codebook,
        index_map=codes.view(frames, positions),
        counts=torch.bincount(codes, minlength=kept.numel()),
        num_clusters=fit.centroids.shape[0],
        candidates=candidates,
        distortions=distortions,
    )


def code_frame_spans(index_map: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last frame in which each code occurs: ``[T, N]`` -> ``([K], [K])`` (``-1`` where a code
    never occurs)."""
    frames, positions = index_map.shape
    frame = torch.arange(frames, device=index_map.device)[:, None].expand(frames, positions).flatten()
    codes = index_map.flatten()
    start = torch.full((num_codes,), frames, dtype=torch.long, device=index_map.device)
    start = start.scatter_reduce(0, codes, frame, reduce="amin")
    end = torch.full((num_codes,), -1, dtype=torch.long, device=index_map.device)
    end = end.scatter_reduce(0, codes, frame, reduce="amax")
    return torch.where(end >= 0, start, -1), end


def video_summary(
    patch_tokens: torch.Tensor, cls_attention: torch.Tensor | None, frame_times: torch.Tensor, code_vectors: str = "unit",
    **params: object,
) -> VideoSummary:
    """:func:`vqtoken` as a summarizer (``models.registry.SUMMARIZERS["vqtoken"]``, called by
    :func:`models.summary.summarize`): ``[T, N, W]`` tokens, ``[T]`` float64 frame times -> a CPU
    :class:`~models.summary.VideoSummary` with one token per code (``cls_attention`` is not used).

    ``code_vectors``: ``"unit"`` stores the codebook (means of the L2-normalised tokens); ``"raw"`` the
    means of each code's raw tokens (:func:`cluster_means`), at the tokens' own scale."""
    if code_vectors not in ("unit", "raw"):
        raise ValueError(f"code_vectors must be 'unit' or 'raw', got {code_vectors!r}")
    frames, num_patches, dim = patch_tokens.shape
    vp = VQTokenParams(**params)  # type: ignore[arg-type]
    vq = vqtoken(patch_tokens, vp)
    num_codes = vq.codebook.shape[0]
    codes = vq.codebook
    if code_vectors == "raw":
        codes = cluster_means(patch_tokens.reshape(frames * num_patches, dim), vq.index_map.flatten(), vq.codebook)
    start, end = code_frame_spans(vq.index_map, num_codes)
    return VideoSummary(
        tokens=codes.float().cpu(),
        sizes=vq.counts.cpu(),
        frame_start=start.cpu(),
        frame_end=end.cpu(),
        positions=torch.full((num_codes,), NO_POSITION, dtype=torch.long),
        frame_times=frame_times,
        num_patches=num_patches,
        method="vqtoken",
        params=asdict(vp),
        index_map=vq.index_map.cpu(),
    )
