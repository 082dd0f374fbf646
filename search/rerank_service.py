"""Per-request reranking of first-stage hits over the summaries stored at ingestion.

The first stage (FAISS over segment embeddings) ranks videos; a reranker then rescores the top
``rerank_k`` of them from the compressed token summaries in the catalog -- never by decoding video:

- ``late`` (:class:`LateReranker`): late interaction of the query's CLIP text embedding with the video's
  CLIP-space summary (``models.rerankers.late``); refines each hit's moment. Its score mixes in the
  first-stage score, so videos without a summary keep their first-stage score and stay comparable.
- ``llm`` (:class:`LlmReranker`): P("yes") from a LLaVA-OneVision model over the video's LLM-space
  summary (``models.rerankers.llava``), batched under a token budget, within a time limit. Its scores
  are not comparable with first-stage cosines, so rescored videos come first and the others follow in
  first-stage order. When the model cannot be loaded, fails or runs out of time, the first-stage
  order is kept and the result says why (``fallback``).

:class:`RerankService` picks the reranker for a request, bounds it to ``rerank_k`` candidates and turns
its scores into an order. The model code lives in ``models``; this module only orchestrates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import torch

from models.rerankers.late import (
    Coverage,
    LateParams,
    coverage,
    late_interaction_batch,
    pack,
    project_summaries,
)
from models.rerankers.llava import LazyLlm, LlmUnavailableError, llm_summary_key
from models.registry import RERANKERS
from models.rerankers.prefill import plan_batches
from models.summary import VideoSummary
from search.catalog import Catalog
from search.settings import Settings
from search.tables import CLIP_SPACE, LLM_SPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A first-stage video hit handed to a reranker: its best segment's score and time range."""

    video_id: int
    score: float
    start: float
    end: float


@dataclass(frozen=True)
class Rescored:
    """A reranker's verdict on one candidate: its score and, when it refines it, the moment (seconds)."""

    score: float
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class RerankOutcome:
    """What a reranker returns for a request.

    Attributes:
        scores: verdicts by video id, for the candidates it could rescore.
        fallback: why it could not run at all (first-stage order kept), or None.
        timings_ms: its stages, milliseconds.
        details: counters worth reporting (e.g. visual tokens fed to the LLM).
    """

    scores: dict[int, Rescored]
    fallback: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    details: dict[str, int] = field(default_factory=dict)


class Reranker(Protocol):
    """Rescores first-stage candidates for a query (``vector`` is its L2-normalised CLIP embedding;
    ``query`` its text, None for a search by an example picture or moment -- those whose registry entry
    says ``needs_text`` are never called without it)."""

    name: str
    same_scale: bool  # are its scores comparable with first-stage scores?

    def rescore(self, query: str | None, vector: np.ndarray, candidates: Sequence[Candidate]) -> RerankOutcome: ...

    def idle_reason(self) -> str | None:
        """Why this reranker can rescore no video of the library as it is now (None: it can rescore some)."""


@dataclass(frozen=True)
class RerankInfo:
    """How a request was reranked, for the response.

    Attributes:
        method: the reranker asked for (``none``, ``late`` or ``llm``).
        candidates: first-stage videos handed to it (at most ``rerank_k``).
        rescored: how many of them got a rerank score.
        without_summary: candidates with no usable summary; they kept their first-stage score.
        fallback: True when the reranker could not run and the first-stage order was kept.
        reason: why (fallback), or None.
        details: reranker counters.
    """

    method: str
    candidates: int = 0
    rescored: int = 0
    without_summary: list[int] = field(default_factory=list)
    fallback: bool = False
    reason: str | None = None
    details: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RerankResult:
    """``order``: candidate indices best first; ``scores``: verdicts by video id; plus report and timings."""

    order: list[int]
    scores: dict[int, Rescored]
    info: RerankInfo
    timings_ms: dict[str, float]


def rerank_order(candidates: Sequence[Candidate], scores: Mapping[int, Rescored], same_scale: bool) -> list[int]:
    """Order candidates by their rerank scores.

    ``same_scale``: a candidate without a verdict competes with its first-stage score. Otherwise the
    rescored candidates come first (by score) and the rest follow in first-stage order. Ties keep the
    first-stage order.
    """
    if same_scale:
        key = [scores[c.video_id].score if c.video_id in scores else c.score for c in candidates]
        return sorted(range(len(candidates)), key=lambda i: -key[i])
    rescored = sorted((i for i, c in enumerate(candidates) if c.video_id in scores), key=lambda i: -scores[candidates[i].video_id].score)
    return rescored + [i for i, c in enumerate(candidates) if c.video_id not in scores]


class RerankService:
    """Chooses and runs the reranker of a request (``rerankers`` by name; ``none`` needs none)."""

    def __init__(self, rerankers: Mapping[str, Reranker], default: str, k: int, unavailable: Mapping[str, str] | None = None):
        self.rerankers, self.default, self.k = dict(rerankers), default, k
        self.unavailable = dict(unavailable or {})  # name -> why it is not configured

    def availability(self) -> dict[str, str | None]:
        """Each reranker name (``none`` included) -> None when a request for it can rescore something on
        the library now, else why not (not configured, or no video has the summary it reads)."""
        state: dict[str, str | None] = {"none": None}
        for name in RERANKERS:
            if name == "none":
                continue
            reranker = self.rerankers.get(name)
            state[name] = self.unavailable.get(name, f"{name} is not available") if reranker is None else reranker.idle_reason()
        return state

    def rerank(self, method: str, query: str | None, vector: np.ndarray, candidates: Sequence[Candidate]) -> RerankResult:
        """Rerank the first ``k`` candidates with ``method``; the rest keep their place after them."""
        head = list(candidates[: self.k])
        untouched = list(range(len(head), len(candidates)))
        reranker = self.rerankers.get(method)
        if reranker is None:
            info = RerankInfo(method, candidates=len(head), fallback=True, reason=self.unavailable.get(method, f"{method} is not available"))
            return RerankResult(list(range(len(candidates))), {}, info, {})
        t0 = time.perf_counter()
        outcome = reranker.rescore(query, vector, head)
        elapsed = round((time.perf_counter() - t0) * 1e3, 3)
        timings = {"rerank": elapsed, **{f"rerank_{k}": v for k, v in outcome.timings_ms.items()}}
        if outcome.fallback is not None:
            info = RerankInfo(method, candidates=len(head), fallback=True, reason=outcome.fallback, details=outcome.details)
            return RerankResult(list(range(len(candidates))), {}, info, timings)
        missing = [c.video_id for c in head if c.video_id not in outcome.scores]
        info = RerankInfo(method, len(head), len(head) - len(missing), missing, details=outcome.details)
        order = rerank_order(head, outcome.scores, reranker.same_scale) + untouched
        return RerankResult(order, outcome.scores, info, timings)


class RerankerUnavailable(RuntimeError):
    """A registered reranker cannot be built with this configuration; the message says why."""


@dataclass(frozen=True)
class RerankerInputs:
    """What a reranker factory (``models.registry.RERANKERS``) may build from.

    Attributes:
        settings: the process's settings.
        catalog: where the summaries are stored.
        space_key: the CLIP embedding space ingestion writes (``indexer.pipeline.embedding_key``).
        project: the backbone's projection of hidden-space tokens ``[M, W]`` into the joint space ``[M, E]``.
        llm: the video LLM, or None when none is configured.
    """

    settings: Settings
    catalog: Catalog
    space_key: str
    project: Callable[[torch.Tensor], torch.Tensor]
    llm: LazyLlm | None = None


def build_rerankers(inputs: RerankerInputs, names: Sequence[str] | None = None) -> tuple[dict[str, Reranker], dict[str, str]]:
    """Every registered reranker (or those of ``names``) that ``inputs`` can build, by name, and why the
    others cannot be."""
    built: dict[str, Reranker] = {}
    unavailable: dict[str, str] = {}
    for name in names if names is not None else RERANKERS.names():
        method = RERANKERS[name]
        if method.factory is None:
            continue
        try:
            built[name] = method.load()(inputs)
        except RerankerUnavailable as exc:
            unavailable[name] = str(exc)
    return built, unavailable


@dataclass(frozen=True)
class _Prepared:
    """A video's summary ready for late interaction: projected tokens and frame coverage, query-independent."""

    stamp: datetime
    summary: VideoSummary
    units: torch.Tensor
    coverage: Coverage


class LateReranker:
    """Late interaction over the CLIP-space summaries (``models.rerankers.late``).

    The query-independent work -- decoding a summary, projecting its tokens into the joint space,
    its frame coverage -- is kept for the ``cache_size`` most recently used videos, keyed by the summary
    row's write time, so a query only reads the versions of its candidates' summaries and the data of
    those it has not seen.
    """

    name = "late"
    same_scale = True

    def __init__(self, catalog: Catalog, space_key: str, project: Callable[[torch.Tensor], torch.Tensor],
                 params: LateParams, last_frame_seconds: float, cache_size: int = 512):
        self.catalog, self.space_key, self.project = catalog, space_key, project
        self.params, self.last_frame_seconds = params, last_frame_seconds
        self.cache_size = cache_size
        self._cache: OrderedDict[int, _Prepared] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def build(cls, inputs: RerankerInputs) -> LateReranker:
        """Late interaction over the CLIP-space summaries written in ``inputs.space_key``."""
        s = inputs.settings
        return cls(inputs.catalog, inputs.space_key, inputs.project, LateParams(weight=s.rerank_weight),
                   last_frame_seconds=1.0 / s.sample_fps)

    def prepared(self, video_ids: Sequence[int]) -> dict[int, _Prepared]:
        """Prepared summaries of those of ``video_ids`` that have one (with tokens)."""
        stamps = self.catalog.summary_stamps(video_ids, self.space_key, CLIP_SPACE)
        with self._lock:
            ready = {vid: p for vid in stamps if (p := self._cache.get(vid)) is not None and p.stamp == stamps[vid]}
        missing = [vid for vid in stamps if vid not in ready]
        if missing:
            records = self.catalog.summaries(missing, self.space_key, CLIP_SPACE)
            summaries = {vid: VideoSummary.from_bytes(r.data) for vid, r in records.items()}
            summaries = {vid: s for vid, s in summaries.items() if s.num_tokens > 0 and vid in stamps}
            units = project_summaries([s.tokens for s in summaries.values()], self.project)
            for (vid, s), u in zip(summaries.items(), units):
                ready[vid] = _Prepared(stamps[vid], s, u, coverage(s))
        with self._lock:
            for vid, p in ready.items():
                self._cache[vid] = p
                self._cache.move_to_end(vid)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ready

    def rescore(self, query: str | None, vector: np.ndarray, candidates: Sequence[Candidate]) -> RerankOutcome:
        """Late interaction reads only ``vector``: a picture's embedding lies in the same joint space as
        a text's, so a search by example is reranked as a text search is."""
        t0 = time.perf_counter()
        ready = self.prepared([c.video_id for c in candidates])
        t1 = time.perf_counter()
        scores = {}
        chosen = [c for c in candidates if c.video_id in ready]
        if chosen:
            prepared = [ready[c.video_id] for c in chosen]
            packed = pack([p.units for p in prepared], [p.summary for p in prepared], [p.coverage for p in prepared],
                          self.last_frame_seconds)
            text = torch.as_tensor(vector, dtype=torch.float32)
            results = late_interaction_batch(packed, text, [c.score for c in chosen], self.params)
            scores = {c.video_id: Rescored(r.score, r.start, r.end) for c, r in zip(chosen, results)}
        t2 = time.perf_counter()
        timings = {"load": round((t1 - t0) * 1e3, 3), "score": round((t2 - t1) * 1e3, 3)}
        return RerankOutcome(scores, timings_ms=timings, details={"summary_tokens": sum(p.summary.num_tokens for p in ready.values())})

    def idle_reason(self) -> str | None:
        if self.catalog.count_summaries(self.space_key, CLIP_SPACE):
            return None
        return "no video has a token summary for this model yet (ingest with VIDSEEK_SUMMARY=holitom or vqtoken)"


class LlmReranker:
    """P("yes") of a LLaVA-OneVision model over the LLM-space summaries (``models.rerankers.llava``).

    Scoring runs on one worker thread; a request waits at most ``timeout`` seconds, then falls back
    to the first-stage order and tells the running job to stop after its current batch.
    """

    name = "llm"
    same_scale = False

    def __init__(self, catalog: Catalog, summary_key: str, llm: LazyLlm, timeout: float, batch_tokens: int):
        self.catalog, self.summary_key, self.llm = catalog, summary_key, llm
        self.timeout, self.batch_tokens = timeout, batch_tokens
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidseek-llm")

    @classmethod
    def build(cls, inputs: RerankerInputs) -> LlmReranker:
        """P("yes") of ``inputs.llm`` over the LLM-space summaries ingestion writes with it."""
        s = inputs.settings
        if inputs.llm is None:
            raise RerankerUnavailable("no video LLM is configured (set VIDSEEK_LLM_RERANKER)")
        key = llm_summary_key(s.llm_reranker, s.llm_summary)
        return cls(inputs.catalog, key, inputs.llm, s.rerank_timeout, s.llm_batch_tokens)

    def rescore(self, query: str, vector: np.ndarray, candidates: Sequence[Candidate]) -> RerankOutcome:
        t0 = time.perf_counter()
        records = self.catalog.summaries([c.video_id for c in candidates], self.summary_key, LLM_SPACE)
        load_ms = round((time.perf_counter() - t0) * 1e3, 3)
        if not records:
            return RerankOutcome({}, timings_ms={"load": load_ms})
        cancel = threading.Event()
        future = self._pool.submit(self._score, query, [c.video_id for c in candidates if c.video_id in records], records, cancel)
        try:
            scores, details = future.result(timeout=self.timeout)
        except FutureTimeout:
            cancel.set()
            return RerankOutcome({}, fallback=f"the video LLM took longer than {self.timeout:g} s", timings_ms={"load": load_ms})
        except LlmUnavailableError as exc:
            return RerankOutcome({}, fallback=f"the video LLM is unavailable: {exc}", timings_ms={"load": load_ms})
        except Exception as exc:
            log.exception("llm reranking failed")
            return RerankOutcome({}, fallback=f"the video LLM failed: {type(exc).__name__}: {exc}", timings_ms={"load": load_ms})
        return RerankOutcome(scores, timings_ms={"load": load_ms, "score": round((time.perf_counter() - t0) * 1e3 - load_ms, 3)},
                             details=details)

    def idle_reason(self) -> str | None:
        if self.catalog.count_summaries(self.summary_key, LLM_SPACE):
            return None
        return "no video has a summary for the video LLM yet (ingest with VIDSEEK_LLM_RERANKER set)"

    def _score(self, query: str, ids: list[int], records: Mapping, cancel: threading.Event) -> tuple[dict[int, Rescored], dict[int, int]]:
        model = self.llm.get()
        visuals = [model.visual_inputs(VideoSummary.from_bytes(records[vid].data).tokens) for vid in ids]
        prefix, suffix = model.prompt_embeddings(query)
        text_tokens = prefix.shape[0] + suffix.shape[0]
        scores: dict[int, Rescored] = {}
        fed = merged = batches = 0
        for batch in plan_batches([text_tokens + v.shape[0] for v in visuals], self.batch_tokens):
            if cancel.is_set():  # the request has given up on us
                break
            out = model.score(query, [visuals[i] for i in batch])
            for i, p in zip(batch, out.p_yes.tolist()):
                scores[ids[i]] = Rescored(p)
            fed += int(out.prefill.visual_tokens.sum())
            merged += int(out.prefill.visual_tokens_merged.sum())
            batches += 1
        return scores, {"visual_tokens": fed, "visual_tokens_after_merge": merged, "batches": batches}

    def shutdown(self, wait: bool = False) -> None:
        """Drop queued scoring jobs; with ``wait``, also wait for the running one to stop."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
