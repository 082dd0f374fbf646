"""Hybrid search: two rankings of videos fused by reciprocal rank fusion.

``mode=hybrid`` ranks videos twice -- by the vector first stage (each video's best segment against the
query's embedding) and by full-text search of the query's words over titles, file names and tags
(``search.text_search``) -- and fuses the two rankings with reciprocal rank fusion (Cormack, Clarke and
Büttcher, SIGIR 2009): a video's fused score is ``sum over the rankings that hold it of 1 / (RRF_K +
rank)``, ranks counted from 1, with ``RRF_K = 60`` as in that paper. Only ranks enter, so cosine scores
and BM25 / ``ts_rank`` scores need no common scale. Each ranking is cut at ``HYBRID_DEPTH`` videos (or the
page asked for, when deeper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VECTOR, TEXT = "vector", "text"
SIGNALS = (VECTOR, TEXT)  # in this order in responses, and for breaking ties
SEARCH_MODES = ("vector", "hybrid")
RRF_K = 60
HYBRID_DEPTH = 50  # videos of each ranking that take part in the fusion


@dataclass(frozen=True)
class Fused:
    """A video's place in the fusion: ``score`` = sum of ``1 / (RRF_K + rank)``, ``ranks`` its 1-based
    rank in each ranking that holds it (``vector``, ``text``)."""

    score: float
    ranks: Mapping[str, int]

    @property
    def signals(self) -> list[str]:
        """The rankings that found the video, in ``SIGNALS`` order."""
        return [s for s in SIGNALS if s in self.ranks]


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[int]], k: int = RRF_K) -> list[tuple[int, Fused]]:
    """Video ids of every ranking (each best first, named by its signal), ordered by fused score; equal
    scores are ordered by their ranks in ``SIGNALS`` order (a video the vector ranking holds first),
    then by id."""
    ranks: dict[int, dict[str, int]] = {}
    for signal in SIGNALS:
        for rank, video_id in enumerate(rankings.get(signal, ()), 1):
            ranks.setdefault(video_id, {}).setdefault(signal, rank)
    fused = [(vid, Fused(sum(1.0 / (k + r) for r in by.values()), by)) for vid, by in ranks.items()]
    missing = float("inf")
    fused.sort(key=lambda p: (-p[1].score, *(p[1].ranks.get(s, missing) for s in SIGNALS), p[0]))
    return fused
