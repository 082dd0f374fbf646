"""Text query -> ranked videos, each with the moment (segment time range) that matched best,
optionally fused with a full-text ranking of titles, file names and tags (``mode=hybrid``,
``search.hybrid``) and reranked from the videos' stored token summaries (``search.rerank_service``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from search.catalog import Catalog, SegmentMeta, VideoName
from search.filters import FilterError, SearchFilters, check_min_score, check_offset
from search.hybrid import HYBRID_DEPTH, SEARCH_MODES, TEXT, VECTOR, Fused, reciprocal_rank_fusion
from search.metrics import observe_search
from search.rerank_service import Candidate, RerankInfo, RerankService, Rescored
from search.segment_index import SegmentIndex
from search.settings import RERANKERS
from search.text_search import query_words

TextEncoder = Callable[[str], np.ndarray]  # query -> L2-normalised float32 [D]

MAX_QUERY_CHARS = 1000
MAX_K = 100
EXTRA_MOMENTS = 3
MAX_WIDENINGS = 2  # extra, wider index searches when the candidates name too few videos
WIDENING_FACTOR = 4


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
    """One video in the results: ``moment`` is its best segment (``moment.score`` is the first-stage
    score), ``more`` up to 3 further ones; ``score`` is what the results are ordered by -- the rerank
    score when ``rerank`` holds a reranker's verdict, else the first-stage score. ``preview`` is the
    segment that shows the matched moment when the reranker moved it out of ``moment``'s segment (its
    thumbnail is the one to show), else None. ``fusion`` is the video's place in a hybrid search's
    fusion (None in vector mode); with it and no reranker, ``score`` is the fused score."""

    video_id: int
    name: VideoName
    score: float
    moment: Moment
    more: list[Moment] = field(default_factory=list)
    rerank: Rescored | None = None
    preview: SegmentMeta | None = None
    fusion: Fused | None = None

    @property
    def title(self) -> str:
        return self.name.title

    @property
    def start(self) -> float:
        """Start of the matched moment: the reranker's refined one when it gave one, else the segment's."""
        return self.rerank.start if self.rerank is not None and self.rerank.start is not None else self.moment.start

    @property
    def end(self) -> float:
        return self.rerank.end if self.rerank is not None and self.rerank.end is not None else self.moment.end


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[VideoHit]
    candidates: int
    timings_ms: dict[str, float]
    rerank: RerankInfo = field(default_factory=lambda: RerankInfo("none"))
    mode: str = "vector"


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


def validate_rerank(name: str) -> str:
    if name not in RERANKERS:
        raise QueryError(f"rerank must be one of {', '.join(RERANKERS)}; got {name!r}")
    return name


def validate_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise QueryError(f"mode must be one of {', '.join(SEARCH_MODES)}; got {mode!r}")
    return mode


class QueryService:
    """Answers text queries over a :class:`SegmentIndex` and the catalog, reranking the top hits with
    ``reranking`` (none configured: only ``rerank=none`` does anything)."""

    def __init__(self, catalog: Catalog, index: SegmentIndex, encode_text: TextEncoder, candidates: int = 200,
                 reranking: RerankService | None = None):
        self.catalog, self.index, self.candidates = catalog, index, candidates
        self.reranking = reranking or RerankService({}, "none", 1)
        self._encode = lru_cache(maxsize=1024)(encode_text)

    def search(self, query: str, k: int = 10, rerank: str | None = None, filters: SearchFilters | None = None,
               min_score: float | None = None, offset: int = 0, mode: str = "vector") -> SearchResult:
        """Top ``k`` videos for ``query`` after skipping the best ``offset``; ``rerank`` names the
        reranker (None: the configured default). Only videos matching ``filters`` are searched (FAISS
        keeps to their segment ids, so a selective filter still fills ``k``); segments whose
        first-stage score is below ``min_score`` are dropped before videos are ranked. ``mode=hybrid``
        fuses the first stage's ranking of videos with a full-text ranking of their titles, file names
        and tags (:meth:`_fused`) before reranking."""
        text = validate_query(query, k)
        method = validate_rerank(rerank if rerank is not None else self.reranking.default)
        mode = validate_mode(mode)
        try:
            min_score, offset = check_min_score(min_score), check_offset(offset)
        except FilterError as exc:
            raise QueryError(str(exc)) from None
        wanted = offset + k
        depth = wanted if method == "none" else max(wanted, self.reranking.k)
        t0 = time.perf_counter()
        vector = self._encode(text)
        t1 = time.perf_counter()
        allowed = None
        if filters is not None and filters.active:
            allowed = self.catalog.segment_ids_where(filters, self.index.state.embedding_key)
        fused: dict[int, Fused] = {}
        if mode == "hybrid":
            depth = max(depth, HYBRID_DEPTH)
        grouped, searched = self._first_stage(vector, depth, allowed, min_score)
        t2 = time.perf_counter()
        if mode == "hybrid":
            grouped, fused, more = self._fused(text, vector, grouped, filters, min_score, depth)
            searched += more
        t_text = time.perf_counter()
        names = self.catalog.video_names([vid for vid, _ in grouped])
        hits = [
            VideoHit(vid, names[vid], fused[vid].score if fused else moments[0].score, moments[0], moments[1:],
                     fusion=fused.get(vid))
            for vid, moments in grouped
            if vid in names
        ]
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3, "group": (t3 - t_text) * 1e3}
        if mode == "hybrid":
            timings["text"] = (t_text - t2) * 1e3
        info = RerankInfo(method)
        if method != "none":
            candidates = [Candidate(h.video_id, h.moment.score, h.moment.start, h.moment.end) for h in hits]
            result = self.reranking.rerank(method, text, vector, candidates)
            hits = [self._rescored(hits[i], result.scores.get(hits[i].video_id)) for i in result.order]
            hits = [self._previewed(hit) for hit in hits[offset:wanted]]  # only the hits returned get a lookup
            timings.update(result.timings_ms)
            info = result.info
        else:
            hits = hits[offset:wanted]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        observe_search(timings)
        return SearchResult(text, hits, searched, {name: round(ms, 3) for name, ms in timings.items()}, info, mode)

    def _fused(self, text: str, vector: np.ndarray, grouped: list[tuple[int, list[Moment]]],
               filters: SearchFilters | None, min_score: float | None,
               depth: int) -> tuple[list[tuple[int, list[Moment]]], dict[int, Fused], int]:
        """The first stage's videos (``grouped``, best first) fused with the full-text ranking of the
        words of ``text`` among the videos matching ``filters`` (:mod:`search.hybrid`): the best ``depth``
        videos with their moments, each video's :class:`Fused`, and the segments looked at. A video only
        the text found gets its moments from a first stage over its own segments; when none of them
        passes ``min_score`` it is left out."""
        key = self.index.state.embedding_key
        text_ids = self.catalog.text_ranking(query_words(text), filters, key, depth)
        moments = dict(grouped)
        missing = [vid for vid in text_ids if vid not in moments]
        searched = 0
        if missing:
            own = self.catalog.segment_ids_of(missing, key)
            found, searched = self._first_stage(vector, len(missing), own, min_score)
            moments.update(found)
        ranking = reciprocal_rank_fusion({VECTOR: [vid for vid, _ in grouped], TEXT: text_ids})
        kept = [(vid, fusion) for vid, fusion in ranking if vid in moments][:depth]
        return [(vid, moments[vid]) for vid, _ in kept], dict(kept), searched

    def _first_stage(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None,
                     min_score: float | None) -> tuple[list[tuple[int, list[Moment]]], int]:
        """Up to ``depth`` videos with their moments from the index (among the ``allowed`` segment
        ids when given), and how many segments were looked at. When the segments fetched name fewer
        than ``depth`` videos (a few videos with many segments each) and more could exist, the search
        is widened, at most ``MAX_WIDENINGS`` times."""
        n = max(self.candidates, depth * (EXTRA_MOMENTS + 1))
        if allowed is not None and not len(allowed):
            return [], 0
        widenings = 0
        while True:
            scores, ids = self.index.search(vector, n, allowed)
            if min_score is not None:
                keep = scores >= min_score
                scores, ids = scores[keep], ids[keep]
            grouped = group_by_video(scores, ids, self.catalog.segment_meta(ids.tolist()), depth)
            exhausted = len(ids) < n  # the index (or min_score) has nothing further
            if len(grouped) >= depth or exhausted or widenings == MAX_WIDENINGS:
                return grouped, len(ids)
            n *= WIDENING_FACTOR
            widenings += 1

    @staticmethod
    def _rescored(hit: VideoHit, verdict: Rescored | None) -> VideoHit:
        return hit if verdict is None else replace(hit, score=verdict.score, rerank=verdict)

    def _previewed(self, hit: VideoHit) -> VideoHit:
        """Point ``preview`` at the segment holding the middle of the refined moment when the reranker
        moved the moment out of the first-stage segment (one catalog lookup per such hit)."""
        if hit.rerank is None or hit.rerank.start is None:
            return hit
        middle = (hit.start + hit.end) / 2
        if hit.moment.start <= middle <= hit.moment.end:
            return hit
        return replace(hit, preview=self.catalog.segment_at(hit.video_id, middle))
