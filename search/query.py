"""Text query -> ranked videos, each with the moment (segment time range) that matched best."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from search.catalog import Catalog, SegmentMeta
from search.segment_index import SegmentIndex

TextEncoder = Callable[[str], np.ndarray]  # query -> L2-normalised float32 [D]

MAX_QUERY_CHARS = 1000
MAX_K = 100
EXTRA_MOMENTS = 3


class QueryError(ValueError):
    """The query cannot be answered as given (empty, too long, bad k)."""


@dataclass(frozen=True)
class Moment:
    segment_id: int
    start: float
    end: float
    score: float
    thumbnail: str | None


@dataclass(frozen=True)
class VideoHit:
    """One video in the results: ``moment`` is its best segment, ``more`` up to 3 further ones."""

    video_id: int
    title: str
    score: float
    moment: Moment
    more: list[Moment] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[VideoHit]
    candidates: int
    timings_ms: dict[str, float]


def validate_query(query: str, k: int) -> str:
    text = " ".join(query.split())
    if not text:
        raise QueryError("query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query is longer than {MAX_QUERY_CHARS} characters")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    return text


def group_by_video(
    scores: np.ndarray, ids: np.ndarray, meta: dict[int, SegmentMeta], k: int
) -> list[tuple[int, list[Moment]]]:
    """Segment hits (best first) -> up to ``k`` videos in order of their best segment, each
    with its moments best first (the best plus up to ``EXTRA_MOMENTS`` more)."""
    per_video: dict[int, list[Moment]] = {}
    for score, sid in zip(scores.tolist(), ids.tolist()):
        m = meta.get(int(sid))
        if m is None:  # deleted since the index last refreshed
            continue
        moments = per_video.setdefault(m.video_id, [])
        if len(moments) <= EXTRA_MOMENTS:
            moments.append(Moment(m.id, m.start, m.end, float(score), m.thumbnail))
    return list(per_video.items())[:k]


class QueryService:
    """Answers text queries over a :class:`SegmentIndex` and the catalog."""

    def __init__(self, catalog: Catalog, index: SegmentIndex, encode_text: TextEncoder, candidates: int = 200):
        self.catalog, self.index, self.candidates = catalog, index, candidates
        self._encode = lru_cache(maxsize=1024)(encode_text)

    def search(self, query: str, k: int = 10) -> SearchResult:
        text = validate_query(query, k)
        t0 = time.perf_counter()
        vector = self._encode(text)
        t1 = time.perf_counter()
        scores, ids = self.index.search(vector, max(self.candidates, k * (EXTRA_MOMENTS + 1)))
        t2 = time.perf_counter()
        meta = self.catalog.segment_meta(ids.tolist())
        grouped = group_by_video(scores, ids, meta, k)
        titles = self.catalog.video_titles([vid for vid, _ in grouped])
        hits = [
            VideoHit(vid, titles.get(vid, str(vid)), moments[0].score, moments[0], moments[1:])
            for vid, moments in grouped
            if vid in titles
        ]
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3, "group": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return SearchResult(text, hits, len(ids), {name: round(ms, 3) for name, ms in timings.items()})
