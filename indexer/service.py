"""Composition root: builds catalog, model, index, query service and ingestion queue from
:class:`~search.settings.Settings`, and the Flask app on top (``indexer`` is the top layer,
so this is where ``search`` gets its ingestion queue without importing ``indexer``).

Production WSGI entry: ``vidseek serve`` (gunicorn), or ``gunicorn 'indexer.service:create_service_app()'``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flask import Flask

from indexer.frames import prepare_image
from indexer.pipeline import VideoIngestor, embedding_key, lazy_llm
from indexer.spaces import active_settings, space_settings
from indexer.tasks import CeleryQueue, InProcessQueue, LazyIngestor, make_celery
from models.backbone import ClipBackbone
from models.factory import embedding_space_key, load_backbone
from models.encoders import SegmentEncoder, build_encoder
from models.rerankers.llava import LazyLlm
from models.text_onnx import TextRuntimeChoice, attach_text_runtime
from search.api import create_app
from search.api.context import ApiContext
from search.catalog import Catalog
from search.db import upgrade
from search.ingestion import IngestionQueue
from search.logs import configure_logging
from search.periodic import run_periodically
from search.query import ImageEncoder, QueryService, SearchSpace, TextEncoder
from search.rerank_service import RerankerInputs, RerankService, build_rerankers
from search.segment_index import SegmentIndex
from search.settings import Settings
from search.text_batcher import TextBatcher
from search.vector_index import IndexOptions

log = logging.getLogger(__name__)


def open_catalog(settings: Settings) -> Catalog:
    """The catalog at ``settings``' database URL, migrated to the latest schema."""
    upgrade(settings.resolved_database_url)
    return Catalog(settings.resolved_database_url)


def load_model(settings: Settings) -> ClipBackbone:
    """The CLIP backbone of ``settings``, its weights cast once to ``VIDSEEK_PRECISION``."""
    return load_backbone(settings.model, settings.pretrained, settings.device, settings.model_config_dir, settings.precision)


def load_encoder(settings: Settings, backbone: ClipBackbone | None = None) -> SegmentEncoder:
    """The segment encoder ``settings`` ask for, over ``backbone`` (loaded if not given; with
    TempMe's trained weights, over a copy carrying them: use ``encoder.backbone`` for queries)."""
    return build_encoder(settings.encoder, backbone or load_model(settings), settings.tempme_weights)


def settings_space_key(settings: Settings) -> str:
    """The embedding space ``settings`` produce (as ``embedding_key(load_encoder(settings))``),
    computed without loading the model."""
    return embedding_space_key(settings.model, settings.pretrained, settings.encoder, settings.tempme_weights)


def open_index(settings: Settings, catalog: Catalog, key: str, dim: int) -> SegmentIndex:
    """The FAISS index of embedding space ``key`` in ``settings``' index folder."""
    options = IndexOptions(settings.index_type, settings.index_nlist, settings.index_nprobe, settings.index_pq_m,
                           auto_at=settings.index_auto_at, search_threads=settings.resolved_search_threads,
                           lists=settings.index_lists)
    return SegmentIndex(catalog, settings.resolved_index_dir, key, dim, options, settings.index_refresh_seconds)


def text_encoder(settings: Settings, backbone: ClipBackbone) -> TextEncoder:
    """Query text -> embedding ``[D]``: through the process's one :class:`TextBatcher`, or one
    forward per query when ``VIDSEEK_TEXT_BATCH_MAX`` is 1."""

    def encode_batch(texts: Sequence[str]) -> np.ndarray:
        return backbone.encode_text(texts).cpu().numpy()

    if settings.text_batch_max == 1:
        return lambda text: encode_batch([text])[0]
    return TextBatcher(encode_batch, settings.text_batch_max, settings.text_batch_wait_ms / 1e3)


def image_encoder(backbone: ClipBackbone) -> ImageEncoder:
    """Example picture RGB ``[H, W, 3]`` uint8 -> embedding ``[D]``: prepared as ingestion prepares a
    sampled frame (:func:`indexer.frames.prepare_image`) and run through ``backbone``'s image tower at
    the precision it was loaded at: the L2-normalised full-CLIP embedding of one frame, as the ``full``
    encoder gives a one-frame segment. Under TempMe too (``backbone`` then carries its trained LoRA,
    if any): a single picture has no frames to merge across, and its segment embeddings stand for
    the same CLIP space as the plain tower's."""

    def encode(image: np.ndarray) -> np.ndarray:
        return backbone.encode_frames(prepare_image(image, backbone)).embeddings[0].cpu().numpy()

    return encode


@dataclass
class Runtime:
    """Everything a vidseek process needs, built once."""

    settings: Settings
    catalog: Catalog
    backbone: ClipBackbone
    encoder: SegmentEncoder
    index: SegmentIndex
    queries: QueryService
    queue: IngestionQueue
    banner: str | None = None
    llm: LazyLlm | None = None  # the video LLM (VIDSEEK_LLM_RERANKER), shared by ingestion and reranking
    text_runtime: TextRuntimeChoice | None = None

    def ingestor(self) -> VideoIngestor:
        return VideoIngestor(self.settings, self.catalog, self.encoder, self.llm, load_encoder)

    def api_context(self) -> ApiContext:
        return ApiContext(
            settings=self.settings,
            catalog=self.catalog,
            index=self.index,
            queries=self.queries,
            ingestion=self.queue,
            model_name=self.backbone.key,
            precision=self.backbone.precision,
            text_runtime=self.text_runtime,
            banner=self.banner,
        )


def reranker_inputs(settings: Settings, catalog: Catalog, encoder: SegmentEncoder, llm: LazyLlm | None = None) -> RerankerInputs:
    """What the reranker factories build from: the CLIP-space summaries ``encoder`` wrote to ``catalog``,
    and the video LLM when ``VIDSEEK_LLM_RERANKER`` is set."""
    return RerankerInputs(settings, catalog, embedding_key(encoder), encoder.backbone.project, llm)


def build_reranking(settings: Settings, catalog: Catalog, encoder: SegmentEncoder, llm: LazyLlm | None) -> RerankService:
    """The registered rerankers ``settings`` make available (``models.registry.RERANKERS``): late interaction
    always (videos without a CLIP-space summary just keep their first-stage score), the video LLM when
    ``VIDSEEK_LLM_RERANKER`` is set."""
    rerankers, unavailable = build_rerankers(reranker_inputs(settings, catalog, encoder, llm))
    return RerankService(rerankers, settings.default_rerank, settings.rerank_k, unavailable)


@dataclass(frozen=True)
class ServingSpace:
    """One embedding space loaded for answering queries: the model, its index and the query side over them."""

    encoder: SegmentEncoder
    text_runtime: TextRuntimeChoice
    index: SegmentIndex
    encode_text: TextEncoder
    reranking: RerankService

    @property
    def backbone(self) -> ClipBackbone:
        return self.encoder.backbone  # the one queries must use: it carries TempMe's text LoRA, if any

    def search_space(self) -> SearchSpace:
        return SearchSpace.of(self.index, self.encode_text, self.reranking, image_encoder(self.backbone))


def load_serving_space(settings: Settings, catalog: Catalog, llm: LazyLlm | None,
                       backbone: ClipBackbone | None = None) -> ServingSpace:
    """The model ``settings`` name (over ``backbone`` when given), its text runtime, its index (not
    refreshed yet) and reranking."""
    encoder = load_encoder(settings, backbone)
    text_runtime = attach_text_runtime(encoder.backbone, settings.text_runtime, settings.data_dir / "text-towers")
    index = open_index(settings, catalog, embedding_key(encoder), encoder.backbone.embed_dim)
    reranking = build_reranking(settings, catalog, encoder, llm)
    return ServingSpace(encoder, text_runtime, index, text_encoder(settings, encoder.backbone), reranking)


def build_runtime(settings: Settings, backbone: ClipBackbone | None = None, banner: str | None = None) -> Runtime:
    """The runtime of ``settings``, with the model of the catalog's active embedding space when one is
    registered (``indexer.spaces.active_settings``; ``backbone`` is then used only if it is that model's)."""
    catalog = open_catalog(settings)
    active = active_settings(settings, catalog)
    if active != settings:
        settings, backbone = active, None
    llm = lazy_llm(settings)
    serving = load_serving_space(settings, catalog, llm, backbone)
    encoder, index = serving.encoder, serving.index
    queries = QueryService(catalog, index, serving.encode_text, settings.search_candidates, serving.reranking,
                           image_encoder(serving.backbone))
    queue: IngestionQueue
    if settings.runs_in_process:
        queue = InProcessQueue(LazyIngestor(lambda: VideoIngestor(settings, catalog, encoder, llm, load_encoder)))
    else:
        queue = CeleryQueue(make_celery(settings))
    return Runtime(settings, catalog, encoder.backbone, encoder, index, queries, queue, banner, llm, serving.text_runtime)


class SpaceFollower:
    """Keeps a query process on the catalog's active embedding space: every refresh tick it reads the
    active key; when ``vidseek reindex`` switched it, the new space's model, text runtime and index
    are loaded (and the index caught up with the catalog) off the request path, then swapped in as
    one :class:`~search.query.SearchSpace` -- a search uses the old model and index or the new ones,
    never a mix -- and the old index stops refreshing. No restart."""

    def __init__(self, runtime: Runtime, context: ApiContext | None = None):
        self.runtime, self.context = runtime, context
        self._base = runtime.settings
        self._stop = threading.Event()

    def check(self) -> bool:
        """Switch to the catalog's active space if it changed; returns whether it switched."""
        key = self.runtime.catalog.active_space_key()
        if key is None or key == self.runtime.queries.space.key:
            return False
        space = self.runtime.catalog.space(key)
        if space is None:
            return False
        settings = space_settings(self._base, space)
        serving = load_serving_space(settings, self.runtime.catalog, self.runtime.llm)
        serving.index.refresh(force=True)
        serving.index.refresh_in_background()
        old = self.runtime.queries.space.index
        self.runtime.queries.switch_space(serving.search_space())
        old.stop_refreshing()
        r = self.runtime
        r.settings, r.encoder, r.backbone, r.index, r.text_runtime = settings, serving.encoder, serving.backbone, serving.index, serving.text_runtime
        if self.context is not None:
            c = self.context
            c.settings, c.index, c.model_name, c.precision, c.text_runtime = (
                settings, serving.index, serving.backbone.key, serving.backbone.precision, serving.text_runtime)
        log.info("switched to the active embedding space", extra={"space": key})
        return True

    def follow_in_background(self) -> threading.Thread:
        """Run :meth:`check` every ``VIDSEEK_INDEX_REFRESH_SECONDS`` (at least every 0.1 s) on a daemon
        thread; errors (the catalog briefly unreachable, a model that cannot load) are logged and retried."""
        return run_periodically(self.check, self._base.index_refresh_seconds, self._stop, "space-follower",
                                "could not follow the active embedding space", log)

    def stop(self) -> None:
        """End the thread of :meth:`follow_in_background` and the current index's refreshing."""
        self._stop.set()
        self.runtime.index.stop_refreshing()


def create_service_app(settings: Settings | None = None) -> Flask:
    """The WSGI app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    runtime = build_runtime(settings)
    runtime.index.refresh(force=True)
    runtime.index.refresh_in_background()
    context = runtime.api_context()
    SpaceFollower(runtime, context).follow_in_background()
    return create_app(context)
