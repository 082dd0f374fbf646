"""Run retrieval evaluations: ingest an annotated video set once per encoder configuration, through
the real ingestion path, and score the captions against the stored segment embeddings.

Per encoder configuration (``full``, ``tempme``, ``tempme+bvllm-dedup``, ...):

1. A fresh data folder with its own SQLite catalog (configurations never share a catalog), the
   encoder over the backbone loaded once for the whole run (building an encoder leaves its
   backbone as it is; trained TempMe weights go to a copy) and
   :class:`~indexer.pipeline.VideoIngestor` around the encoder, wrapped in
   :class:`~indexer.evaluation.meter.MeteredEncoder` to measure it.
2. Every annotated video goes through ``VideoIngestor.run_job``, as ``vidseek ingest`` runs it.
3. Each video's embedding is pooled from the segment embeddings the catalog stores -- the
   vectors search uses -- by :func:`pool_segments`. CLIP4Clip's meanP video embedding is the
   mean of the frame embeddings of up to ``max_frames`` frames sampled uniformly (1 fps, 12
   frames for MSR-VTT); with ``segment_frames >= max_frames`` (the default here) a video is one
   segment and its segment embedding *is* that mean, re-normalised (cosine ranking ignores the
   norm). Longer videos, split into several segments, get the segments' mean weighted by the
   time each covers: sampling is uniform in time, so this is each segment's share of the sampled
   frames, also when static-frame dropping left a segment holding fewer encoded frames.
4. Captions are encoded by the encoder's backbone; ``similarity = texts @ videos.T``; each requested
   reranker (``none`` is the identity) may rewrite that matrix; :mod:`.metrics` scores it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.evaluation.annotations import Annotations
from indexer.evaluation.configs import EncoderConfig, EvalError, check_rerankers
from indexer.evaluation.meter import MeteredEncoder
from indexer.evaluation.metrics import RetrievalMetrics, retrieval_metrics
from indexer.pipeline import VideoIngestor
from indexer.service import load_encoder, load_model, open_catalog, reranker_inputs
from models.backbone import ClipBackbone
from models.factory import weights_identity
from models.encoders import SegmentEncoder
from models.registry import RERANKERS
from search.catalog import Catalog, embedding_from_bytes
from search.rerank_service import Candidate, build_rerankers
from search.settings import Settings
from search.tables import Status

log = logging.getLogger(__name__)

TEXT_BATCH = 256


# ----- rerankers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class IngestedSet:
    """One configuration's ingested evaluation set: what a reranker may look at.

    ``video_ids[v]`` is the catalog id of annotated video ``v``; ``texts[q]`` caption ``q``.
    """

    settings: Settings
    catalog: Catalog
    backbone: ClipBackbone
    encoder: SegmentEncoder
    video_ids: tuple[int, ...]
    texts: tuple[str, ...]


# Rerankers are the search's (models.registry.RERANKERS); those that read CLIP-space summaries get them
# made at ingestion (config_settings). The LLM-space ones need a video LLM and its own summaries, which
# eval does not make.
# Videos outside a caption's reranked top-k stay below every reranked one (scores are cosines).
OUTSIDE_TOP_K = 10.0


def rerank_similarities(method: str, ingested: IngestedSet, sim: np.ndarray) -> np.ndarray:
    """The caption x video similarities ``[Q, V]`` rescored by the search's reranker ``method``, applied per
    caption to its top ``rerank_k`` videos as ``GET /api/search?rerank=...`` does; the others keep their
    first-stage order below them. ``none`` returns ``sim``. The reranker's scores must be on the
    first-stage scale (``same_scale``): they are compared across videos as they are."""
    if RERANKERS[method].factory is None:
        return sim
    s = ingested.settings
    built, unavailable = build_rerankers(reranker_inputs(s, ingested.catalog, ingested.encoder), [method])
    if method not in built:
        raise EvalError(f"reranker {method!r} cannot run here: {unavailable.get(method)}")
    reranker = built[method]
    if not reranker.same_scale:
        raise EvalError(f"reranker {method!r} scores on its own scale; vidseek eval compares scores across videos")
    texts = encode_texts(ingested.backbone, ingested.texts)
    out = sim - OUTSIDE_TOP_K
    for q, row in enumerate(sim):
        top = np.argsort(-row, kind="stable")[: s.rerank_k]
        # whole videos are scored here, so the first-stage moment (start, end) plays no part
        candidates = [Candidate(ingested.video_ids[v], float(row[v]), 0.0, 0.0) for v in top]
        rescored = reranker.rescore(ingested.texts[q], texts[q], candidates).scores
        for v, c in zip(top, candidates):
            out[q, v] = rescored[c.video_id].score if c.video_id in rescored else row[v]
    return out


# ----- pooling and text ---------------------------------------------------------------------
def pool_segments(embeddings: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Segment embeddings ``[S, E]`` and the seconds each covers ``[S]`` -> the video's ``[E]``
    embedding: their span-weighted mean, L2-normalised (equal weights if no span is positive)."""
    weights = np.clip(np.asarray(spans, dtype=np.float64), 0.0, None)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    pooled = (np.asarray(embeddings, dtype=np.float64) * weights[:, None]).sum(axis=0)
    return (pooled / max(np.linalg.norm(pooled), np.finfo(np.float64).tiny)).astype(np.float32)


def encode_texts(backbone: ClipBackbone, texts: Sequence[str], batch: int = TEXT_BATCH) -> np.ndarray:
    """Captions -> ``[Q, E]`` float32 L2-normalised embeddings (the query path of search)."""
    chunks = [backbone.encode_text(list(texts[i : i + batch])).cpu().numpy() for i in range(0, len(texts), batch)]
    return np.concatenate(chunks).astype(np.float32)


# ----- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Efficiency:
    """Visual cost of ingesting one configuration, per distinct video.

    ``encode_fps`` is sampled frames per second of encoder time (frames dropped before the ViT
    count as sampled, their dropping does not count as encoder time); ``ingest_fps`` is sampled
    frames per second of the whole ingestion (decoding, dropping, encoding, catalog writes).
    """

    videos: int
    frames_sampled: int
    frames_encoded: int
    tokens_per_video: float
    gflops_per_video: float
    encode_seconds: float
    ingest_seconds: float

    @property
    def encode_fps(self) -> float:
        return self.frames_sampled / self.encode_seconds if self.encode_seconds > 0 else float("nan")

    @property
    def ingest_fps(self) -> float:
        return self.frames_sampled / self.ingest_seconds if self.ingest_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(encode_fps=self.encode_fps, ingest_fps=self.ingest_fps)
        return out


@dataclass(frozen=True)
class ConfigResult:
    encoder: str
    rerank: str
    settings: Mapping[str, object]
    metrics: RetrievalMetrics
    efficiency: Efficiency

    @property
    def name(self) -> str:
        return self.encoder if self.rerank == "none" else f"{self.encoder} +rerank {self.rerank}"


@dataclass(frozen=True)
class EvalRun:
    """Everything one ``vidseek eval`` measured."""

    annotations: Path
    annotation_format: str
    videos: int
    captions: int
    model: str
    weights: str
    tempme_weights: str | None  # identity of VIDSEEK_TEMPME_WEIGHTS, used by tempme configurations
    sampling: Mapping[str, float | int]
    results: list[ConfigResult] = field(default_factory=list)


# ----- running ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRequest:
    base: Settings
    annotations: Annotations
    annotation_path: Path
    videos: Mapping[str, Path]  # annotated video id -> absolute path of its file
    encoders: Sequence[EncoderConfig]
    rerankers: Sequence[str]
    work_dir: Path | None = None


def config_settings(request: EvalRequest, config: EncoderConfig, data_dir: Path) -> Settings:
    """The Settings a configuration ingests with: ``request.base`` with the configuration's
    overrides, an embedded SQLite catalog in ``data_dir``, in-process jobs, the videos' folders as
    media roots, and token summaries only when a requested reranker reads them (the base's method,
    HoliTom if it has none)."""
    roots = tuple(dict.fromkeys(p.parent for p in request.videos.values()))
    summary = "none"
    if any(RERANKERS[name].summary_space == "clip" for name in request.rerankers):
        summary = request.base.summary if request.base.summary != "none" else "holitom"
    return request.base.with_overrides(
        data_dir=data_dir,
        database_url="",
        broker_url="",
        index_dir=None,
        summary=summary,
        media_roots=roots,
        **config.overrides,
    )


def ingest_videos(
    ingestor: VideoIngestor, meter: MeteredEncoder, paths: Sequence[Path]
) -> tuple[dict[Path, int], Efficiency]:
    """Ingest ``paths`` one job at a time; returns each path's catalog video id and the cost.

    Raises:
        EvalError: a video failed (an evaluation never silently drops one).
    """
    catalog = ingestor.catalog
    video_of: dict[Path, int] = {}
    encoded_videos: set[int] = set()
    ingest_seconds = 0.0
    frames_sampled = 0
    start = meter.meter.snapshot()
    for path in tqdm(paths, desc=f"ingesting ({meter.name})", unit="video", leave=False):
        job = catalog.create_job(path)
        before = meter.meter.snapshot()
        started = time.perf_counter()
        status = ingestor.run_job(job.id)
        elapsed = time.perf_counter() - started - meter.meter.minus(before).overhead_seconds
        finished = catalog.get_job(job.id)
        if status is not Status.done or finished is None or finished.video_id is None:
            raise EvalError(f"{path}: ingestion failed: {finished.error if finished else 'job vanished'}")
        video_of[path] = finished.video_id
        if finished.video_id not in encoded_videos and meter.meter.minus(before).frames_encoded > 0:
            encoded_videos.add(finished.video_id)
            video = catalog.get_video(finished.video_id)
            frames_sampled += int(video.frames_sampled or 0) if video else 0
            ingest_seconds += elapsed
    spent = meter.meter.minus(start)
    n = max(len(encoded_videos), 1)
    return video_of, Efficiency(
        videos=len(encoded_videos),
        frames_sampled=frames_sampled,
        frames_encoded=spent.frames_encoded,
        tokens_per_video=spent.tokens / n,
        gflops_per_video=spent.flops / n / 1e9,
        encode_seconds=spent.encode_seconds,
        ingest_seconds=ingest_seconds,
    )


def video_embeddings(catalog: Catalog, video_ids: Sequence[int]) -> np.ndarray:
    """``[V, E]``: :func:`pool_segments` over each catalog video's stored segments."""
    rows = []
    for vid in video_ids:
        segments = catalog.segments_of(vid)
        if not segments:
            raise EvalError(f"catalog video {vid} has no segments")
        embeddings = np.stack([embedding_from_bytes(s.embedding) for s in segments])
        rows.append(pool_segments(embeddings, np.array([s.end - s.start for s in segments])))
    return np.stack(rows)


def run_configuration(request: EvalRequest, config: EncoderConfig, backbone: ClipBackbone) -> list[ConfigResult]:
    """Ingest the evaluation set with ``config`` in a throw-away data folder and score it with
    every requested reranker; ``backbone`` is the run's model (``request.base``'s)."""
    annotations = request.annotations
    with tempfile.TemporaryDirectory(prefix="vidseek-eval-", dir=request.work_dir) as tmp:
        settings = config_settings(request, config, Path(tmp))
        catalog = open_catalog(settings)
        try:
            try:
                encoder = MeteredEncoder(load_encoder(settings, backbone))
            except (ImportError, ValueError) as exc:
                raise EvalError(f"configuration {config.name!r}: cannot build encoder {settings.encoder!r}: {exc}") from exc
            backbone = encoder.backbone  # carries TempMe's text LoRA when trained weights are set
            ingestor = VideoIngestor(settings, catalog, encoder)
            paths = list(dict.fromkeys(request.videos[v] for v in annotations.video_ids))
            with encoder.attached():
                video_of, efficiency = ingest_videos(ingestor, encoder, paths)
            catalog_ids = tuple(video_of[request.videos[v]] for v in annotations.video_ids)
            videos = video_embeddings(catalog, catalog_ids)
            texts = tuple(c.text for c in annotations.captions)
            sim = encode_texts(backbone, texts) @ videos.T
            ingested = IngestedSet(settings, catalog, backbone, encoder, catalog_ids, texts)
            caption_video = np.array(annotations.caption_video_index())
            return [
                ConfigResult(
                    config.name,
                    name,
                    dict(config.overrides),
                    retrieval_metrics(rerank_similarities(name, ingested, sim), caption_video),
                    efficiency,
                )
                for name in request.rerankers
            ]
        finally:
            catalog.dispose()


def run_eval(request: EvalRequest) -> EvalRun:
    """Every configuration of ``request``, one after the other, in the order given."""
    check_rerankers(request.rerankers)
    base = request.base
    run = EvalRun(
        annotations=request.annotation_path,
        annotation_format=request.annotations.format,
        videos=len(request.annotations.video_ids),
        captions=len(request.annotations.captions),
        model=base.model,
        weights=weights_identity(base.pretrained),
        tempme_weights=weights_identity(str(base.tempme_weights)) if base.tempme_weights else None,
        sampling={"sample_fps": base.sample_fps, "max_frames": base.max_frames, "segment_frames": base.segment_frames},
    )
    backbone = load_model(base)
    for config in request.encoders:
        log.info("evaluating configuration", extra={"configuration": config.name})
        run.results.extend(run_configuration(request, config, backbone))
    return run
