"""A query -> ranked videos, each with the moment (segment time range) that matched best,
optionally fused with a full-text ranking of titles, file names and tags (``mode=hybrid``,
``search.hybrid``) and reranked from the videos' stored token summaries (``search.rerank_service``).

A query is a vector in the index's embedding space (:class:`QueryVector`), made from text, from an
example picture (with or without text), or taken from a stored moment ("more like this"); all of
them are answered by one first stage, :meth:`QueryService.search_vector`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from models.registry import RERANKERS
from search.catalog import Catalog, NamedSegment, SegmentMeta, VideoName, embedding_from_bytes
from search.filters import FilterError, SearchFilters, check_min_score, check_offset
from search.hybrid import HYBRID_DEPTH, SEARCH_MODES, TEXT, VECTOR, Fused, reciprocal_rank_fusion
from search.metrics import observe_search
from search.rerank_service import Candidate, RerankInfo, RerankService, Rescored
from search.segment_index import SegmentIndex
from search.segment_owners import UNKNOWN
from search.text_search import query_words

TextEncoder = Callable[[str], np.ndarray]  # query -> L2-normalised float32 [D]
ImageEncoder = Callable[[np.ndarray], np.ndarray]  # RGB picture uint8 [H, W, 3] -> L2-normalised float32 [D]

MAX_QUERY_CHARS = 1000
MAX_K = 100
EXTRA_MOMENTS = 3
MAX_WIDENINGS = 2  # extra, wider index searches when the candidates name too few videos
WIDENING_FACTOR = 4


class QueryError(ValueError):
    """The query cannot be answered as given (empty, too long, bad k)."""


class ExampleNotFound(QueryError):
    """The moment a "more like this" query names does not exist (no such segment or video)."""


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
    space: str = ""  # the embedding space that answered (``Segment.embedding_key``)


@dataclass(frozen=True)
class QueryVector:
    """What the first stage searches with.

    Attributes:
        vector: float32 ``[D]``, L2-normalised, in the index's embedding space.
        label: what was searched, in words (the result's ``query``): the text, ``image``, ``like segment N``.
        text: the query text, for rerankers that read it; None when the query has none.
        exclude: segment ids left out of the results (the example moment itself).
        timings_ms: what making the vector took, per stage (``encode``, ``lookup``).
        space: the embedding space the vector was made in, searched with it (None: the current one).
    """

    vector: np.ndarray
    label: str
    text: str | None = None
    exclude: frozenset[int] = frozenset()
    timings_ms: dict[str, float] = field(default_factory=dict)
    space: SearchSpace | None = None


@dataclass(frozen=True)
class SearchSpace:
    """What a search reads of one embedding space, replaced as a whole when the active space changes
    (``vidseek reindex``): its index, the text encoder of its model (``text -> [D]``, cached), its image
    encoder (None: not offered) and the reranking over its summaries. A query vector is made in the
    space current then and searched in that same space, so a search uses either the old model with
    the old index or the new ones, never a mix."""

    index: SegmentIndex
    encode: TextEncoder
    reranking: RerankService
    encode_image: ImageEncoder | None = None

    @classmethod
    def of(cls, index: SegmentIndex, encode_text: TextEncoder, reranking: RerankService | None = None,
           encode_image: ImageEncoder | None = None) -> SearchSpace:
        return cls(index, lru_cache(maxsize=1024)(encode_text), reranking or RerankService({}, "none", 1), encode_image)

    @property
    def key(self) -> str:
        return self.index.state.embedding_key


def validate_text(query: str) -> str:
    """``query`` with its whitespace collapsed; :class:`QueryError` when empty or too long."""
    text = " ".join(query.split())
    if not text:
        raise QueryError("query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query is longer than {MAX_QUERY_CHARS} characters")
    return text


def validate_weight(image_weight: float) -> float:
    if not (math.isfinite(image_weight) and 0.0 <= image_weight <= 1.0):
        raise QueryError("image_weight must be a number between 0 and 1")
    return image_weight


def blend(text: np.ndarray, image: np.ndarray, image_weight: float) -> np.ndarray:
    """Two L2-normalised ``[D]`` embeddings -> their weighted sum ``(1 - w) text + w image``, normalised
    (``w`` = 1: the image's direction, 0: the text's)."""
    mixed = (1.0 - image_weight) * text.astype(np.float32) + image_weight * image.astype(np.float32)
    norm = float(np.linalg.norm(mixed))
    if not norm > 1e-6:
        raise QueryError("the text and the image cancel out; search with one of them")
    return (mixed / norm).astype(np.float32)


def group_by_video(videos: np.ndarray, k: int) -> list[tuple[int, list[int]]]:
    """The videos int64 ``[n]`` of segment hits (best hit first; :data:`UNKNOWN` for a hit to leave
    out) -> up to ``k`` videos in order of their best hit, each with the positions of its moments,
    best first (the best plus up to ``EXTRA_MOMENTS`` more)."""
    per_video: dict[int, list[int]] = {}
    for position, video in enumerate(videos.tolist()):
        if video == UNKNOWN:
            continue
        positions = per_video.setdefault(video, [])
        if len(positions) <= EXTRA_MOMENTS:
            positions.append(position)
    return list(per_video.items())[:k]


@dataclass(frozen=True)
class FirstStage:
    """What the index search found: up to ``depth`` videos with their moments (best first), the
    videos' names, and how many segments were looked at."""

    grouped: list[tuple[int, list[Moment]]]
    names: dict[int, VideoName]
    searched: int


def validate_rerank(name: str) -> str:
    if name not in RERANKERS:
        raise QueryError(f"rerank must be one of {', '.join(RERANKERS)}; got {name!r}")
    return name


def validate_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise QueryError(f"mode must be one of {', '.join(SEARCH_MODES)}; got {mode!r}")
    return mode


@dataclass(frozen=True)
class SearchOptions:
    """Which results a search returns: the top ``k`` videos after skipping the best ``offset``, reranked
    by ``rerank`` (None: the configured default), among the videos matching ``filters`` (FAISS keeps to
    their segment ids, so a selective filter still fills ``k``), from the moments whose first-stage
    score is at least ``min_score``; ``mode=hybrid`` fuses the first stage's ranking of videos with a
    full-text ranking of their titles, file names and tags (needs query text). Checked when made:
    :class:`QueryError` names the bad value."""

    k: int = 10
    rerank: str | None = None
    filters: SearchFilters | None = None
    min_score: float | None = None
    offset: int = 0
    mode: str = "vector"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}")
        if self.rerank is not None:
            validate_rerank(self.rerank)
        validate_mode(self.mode)
        try:
            check_min_score(self.min_score)
            check_offset(self.offset)
        except FilterError as exc:
            raise QueryError(str(exc)) from None


def _moment(meta: SegmentMeta, score: float) -> Moment:
    return Moment(meta.id, meta.start, meta.end, score, meta.thumbnail)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


class QueryService:
    """Answers queries -- text, an example picture (``encode_image``; None: not offered), or a stored
    moment -- over a :class:`SegmentIndex` and the catalog, reranking the top hits with ``reranking``
    (none configured: only ``rerank=none`` does anything)."""

    def __init__(self, catalog: Catalog, index: SegmentIndex, encode_text: TextEncoder, candidates: int = 200,
                 reranking: RerankService | None = None, encode_image: ImageEncoder | None = None):
        self.catalog, self.candidates = catalog, candidates
        self.space = SearchSpace.of(index, encode_text, reranking, encode_image)

    @property
    def index(self) -> SegmentIndex:
        return self.space.index

    @property
    def reranking(self) -> RerankService:
        return self.space.reranking

    def switch_space(self, space: SearchSpace) -> None:
        """Answer from ``space`` from the next query on (those under way finish in the old one)."""
        self.space = space

    # ----- queries -------------------------------------------------------------------------
    def text_query(self, query: str) -> QueryVector:
        text = validate_text(query)
        space = self.space
        t0 = time.perf_counter()
        vector = space.encode(text)
        return QueryVector(vector, text, text, timings_ms={"encode": _ms(t0)}, space=space)

    def image_query(self, image: np.ndarray, text: str | None = None, image_weight: float = 0.5) -> QueryVector:
        """The query of an example picture (RGB ``[H, W, 3]`` uint8), encoded as ingestion encodes a
        frame; with ``text``, the normalised blend of both embeddings (:func:`blend`, ``image_weight``
        the picture's share)."""
        space = self.space
        if space.encode_image is None:
            raise QueryError("this server does not search by image")
        image_weight = validate_weight(image_weight)
        text = validate_text(text) if text is not None else None
        t0 = time.perf_counter()
        vector = space.encode_image(image)
        if text is None:
            return QueryVector(vector, "image", timings_ms={"encode": _ms(t0)}, space=space)
        vector = blend(space.encode(text), vector, image_weight)
        return QueryVector(vector, f"{text} + image (image_weight {image_weight:g})", text, timings_ms={"encode": _ms(t0)},
                           space=space)

    def like_query(self, segment_id: int | None = None, video_id: int | None = None, t: float | None = None) -> QueryVector:
        """"More moments like this": the stored embedding of segment ``segment_id``, or of the segment of
        ``video_id`` that holds second ``t``; that segment is left out of the results, its video is not.

        Raises:
            ExampleNotFound: no such segment or video, no segment at ``t``, or one this index does not hold.
            QueryError: neither a segment nor a video and time named, or a bad ``t``.
        """
        space = self.space
        t0 = time.perf_counter()
        if segment_id is None:
            segment_id = self._segment_at(video_id, t)
        segment = self.catalog.get_segment(segment_id)
        if segment is None:
            raise ExampleNotFound(f"no segment {segment_id}")
        key = space.key
        if segment.embedding_key != key:
            raise ExampleNotFound(f"segment {segment_id} was indexed with another model ({segment.embedding_key}), "
                                  f"not with this index's {key}")
        vector = embedding_from_bytes(segment.embedding)
        vector = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
        return QueryVector(vector, f"like segment {segment_id}", exclude=frozenset({segment_id}),
                           timings_ms={"lookup": _ms(t0)}, space=space)

    def _segment_at(self, video_id: int | None, t: float | None) -> int:
        if video_id is None or t is None:
            raise QueryError("like needs a segment_id, or a video_id and a time t")
        if not (math.isfinite(t) and t >= 0):
            raise QueryError("t must be a non-negative number of seconds")
        meta = self.catalog.segment_at(video_id, t)
        if meta is None:
            known = self.catalog.get_video(video_id) is not None
            raise ExampleNotFound(f"video {video_id} has no indexed segments" if known else f"no video {video_id}")
        if t > meta.end:
            raise ExampleNotFound(f"video {video_id} has no segment at {t:g} s (its last one ends at {meta.end:g} s)")
        return meta.id

    # ----- search --------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, rerank: str | None = None, filters: SearchFilters | None = None,
               min_score: float | None = None, offset: int = 0, mode: str = "vector") -> SearchResult:
        """Text ``query``: encoded, then :meth:`search_vector` with these :class:`SearchOptions`."""
        text = validate_text(query)
        options = SearchOptions(k, rerank, filters, min_score, offset, mode)  # checked before the encoder runs
        return self.search_vector(self.text_query(text), options)

    def search_vector(self, query: QueryVector, options: SearchOptions) -> SearchResult:
        """The videos ``options`` ask for, ranked for ``query``. A reranker that reads text refuses a query
        without any when it is asked for by name (:class:`QueryError`), and is skipped when it is only the
        configured default (the result says why); so does hybrid mode, which matches the query's words."""
        if options.mode == "hybrid" and query.text is None:
            raise QueryError("mode=hybrid matches the query's words: with an image or a moment alone, "
                             "use mode=vector (or add q)")
        space = query.space or self.space
        method, skipped = self._reranker_for(query, options.rerank, space.reranking)
        wanted = options.offset + options.k
        depth = wanted if method == "none" else max(wanted, space.reranking.k)
        t0 = time.perf_counter()
        allowed = None
        if options.filters is not None and options.filters.active:
            allowed = self.catalog.segment_ids_where(options.filters, space.key)
        fused: dict[int, Fused] = {}
        if options.mode == "hybrid":
            depth = max(depth, HYBRID_DEPTH)
        stage = self._first_stage(space.index, query.vector, depth, allowed, options.min_score, query.exclude)
        t1 = time.perf_counter()
        if options.mode == "hybrid":
            stage, fused = self._fused(space.index, query, stage, options, depth)
        t_text = time.perf_counter()
        grouped, names, searched = stage.grouped, stage.names, stage.searched
        hits = [
            VideoHit(vid, names[vid], fused[vid].score if fused else moments[0].score, moments[0], moments[1:],
                     fusion=fused.get(vid))
            for vid, moments in grouped
            if vid in names
        ]
        t2 = time.perf_counter()
        timings = {**query.timings_ms, "search": (t1 - t0) * 1e3, "group": (t2 - t_text) * 1e3}
        if options.mode == "hybrid":
            timings["text"] = (t_text - t1) * 1e3
        info = skipped or RerankInfo(method)
        if method != "none":
            candidates = [Candidate(h.video_id, h.moment.score, h.moment.start, h.moment.end) for h in hits]
            result = space.reranking.rerank(method, query.text, query.vector, candidates)
            hits = [self._rescored(hits[i], result.scores.get(hits[i].video_id)) for i in result.order]
            hits = [self._previewed(hit) for hit in hits[options.offset:wanted]]  # only the hits returned get a lookup
            timings.update(result.timings_ms)
            info = result.info
        else:
            hits = hits[options.offset:wanted]
        timings["total"] = sum(query.timings_ms.values()) + _ms(t0)
        observe_search(timings)
        return SearchResult(query.label, hits, searched, {name: round(ms, 3) for name, ms in timings.items()}, info,
                            options.mode, space.key)

    def _fused(self, index: SegmentIndex, query: QueryVector, stage: FirstStage, options: SearchOptions,
               depth: int) -> tuple[FirstStage, dict[int, Fused]]:
        """The first ``stage``'s videos (best first) fused with the full-text ranking of the words of
        ``query.text`` among the videos matching ``options.filters`` (:mod:`search.hybrid`): the best
        ``depth`` videos with their moments, and each video's :class:`Fused`. A video only the text
        found gets its moments from a first stage over its own segments; when none of them passes
        ``options.min_score`` it is left out."""
        key = index.state.embedding_key
        text_ids = self.catalog.text_ranking(query_words(query.text or ""), options.filters, key, depth)
        moments, names, searched = dict(stage.grouped), dict(stage.names), stage.searched
        missing = [vid for vid in text_ids if vid not in moments]
        if missing:
            own = self.catalog.segment_ids_of(missing, key)
            found = self._first_stage(index, query.vector, len(missing), own, options.min_score, query.exclude)
            moments.update(found.grouped)
            names.update(found.names)
            searched += found.searched
        ranking = reciprocal_rank_fusion({VECTOR: [vid for vid, _ in stage.grouped], TEXT: text_ids})
        kept = [(vid, fusion) for vid, fusion in ranking if vid in moments][:depth]
        return FirstStage([(vid, moments[vid]) for vid, _ in kept], names, searched), dict(kept)

    @staticmethod
    def _reranker_for(query: QueryVector, asked: str | None, reranking: RerankService) -> tuple[str, RerankInfo | None]:
        """The reranker to run -- ``asked``, else ``reranking``'s default -- and, when that default reads
        text and ``query`` has none, ``none`` instead with the report saying why."""
        method = asked if asked is not None else reranking.default
        if query.text is not None or not RERANKERS[method].needs_text:
            return method, None
        if asked is not None:
            raise QueryError(f"rerank={method} reads the query text: with an image or a moment alone, "
                             "use rerank=none or late (or add q)")
        return "none", RerankInfo(method, fallback=True, reason=f"{method} reranking reads the query text; this search has none")

    def _first_stage(self, index: SegmentIndex, vector: np.ndarray, depth: int, allowed: np.ndarray | None,
                     min_score: float | None, exclude: frozenset[int] = frozenset()) -> FirstStage:
        """Up to ``depth`` videos with their moments from ``index`` (among the ``allowed`` segment
        ids when given, never the ``exclude`` ones). Hits are grouped by video with the index's own
        segment -> video map, so only the moments kept are read from the catalog. When the segments
        fetched name fewer than ``depth`` videos (a few videos with many segments each) and more
        could exist, the search is widened, at most ``MAX_WIDENINGS`` times."""
        n = max(self.candidates, depth * (EXTRA_MOMENTS + 1))
        if allowed is not None and not len(allowed):
            return FirstStage([], {}, 0)
        excluded = np.fromiter(exclude, np.int64, len(exclude))
        widenings = 0
        while True:
            scores, ids = index.search(vector, n, allowed)
            if min_score is not None:
                keep = scores >= min_score
                scores, ids = scores[keep], ids[keep]
            exhausted = len(ids) < n  # the index (or min_score) has nothing further
            if len(excluded):
                keep = ~np.isin(ids, excluded)
                scores, ids = scores[keep], ids[keep]
            videos = index.videos_of(ids)
            picked = group_by_video(videos, depth)
            if len(picked) >= depth or exhausted or widenings == MAX_WIDENINGS:
                return self._read_moments(scores, ids, videos, depth, picked)
            n *= WIDENING_FACTOR
            widenings += 1

    def _read_moments(self, scores: np.ndarray, ids: np.ndarray, videos: np.ndarray, depth: int,
                      picked: list[tuple[int, list[int]]]) -> FirstStage:
        """The moments ``picked`` (:func:`group_by_video` of ``videos [n]``, ``depth``) of the hits
        ``(scores [n], ids [n])``, read from the catalog with their videos' names in one read. A segment
        deleted since the index last refreshed is left out and the next hit of its video taken (one
        more read)."""
        rows: dict[int, NamedSegment] = {}
        while True:
            wanted = [int(ids[p]) for _, positions in picked for p in positions if int(ids[p]) not in rows]
            found = self.catalog.named_segments(wanted)
            rows.update(found)
            gone = [sid for sid in wanted if sid not in found]
            if not gone:
                break
            videos = np.where(np.isin(ids, gone), UNKNOWN, videos)
            picked = group_by_video(videos, depth)
        grouped = [(video, [_moment(rows[int(ids[p])].meta, float(scores[p])) for p in positions])
                   for video, positions in picked]
        names = {video: rows[int(ids[positions[0]])].name for video, positions in picked}
        return FirstStage(grouped, names, len(ids))

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
