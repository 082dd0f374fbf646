"""Composition root: builds catalog, model, index, query service and ingestion queue from
:class:`~search.settings.Settings`, and the Flask app on top (``indexer`` is the top layer,
so this is where ``search`` gets its ingestion queue without importing ``indexer``).

Production WSGI entry: ``vidseek serve`` (gunicorn), or ``gunicorn 'indexer.service:create_service_app()'``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from indexer.pipeline import VideoIngestor, embedding_key, lazy_llm, space_key
from indexer.tasks import CeleryQueue, InProcessQueue, LazyIngestor, make_celery
from models.backbone import ClipBackbone, backbone_key, load_backbone, weights_identity
from models.encoders import SegmentEncoder, build_encoder
from models.rerankers.llava import LazyLlm
from search.api import create_app
from search.api.context import ApiContext
from search.catalog import Catalog
from search.db import upgrade
from search.ingestion import IngestionQueue
from search.logs import configure_logging
from search.query import QueryService
from search.rerank_service import RerankerInputs, RerankService, build_rerankers
from search.segment_index import SegmentIndex
from search.settings import Settings
from search.vector_index import IndexOptions

log = logging.getLogger(__name__)


def open_catalog(settings: Settings) -> Catalog:
    """The catalog at ``settings``' database URL, migrated to the latest schema."""
    upgrade(settings.resolved_database_url)
    return Catalog(settings.resolved_database_url)


def load_model(settings: Settings) -> ClipBackbone:
    return load_backbone(settings.model, settings.pretrained, settings.device, settings.model_config_dir)


def load_encoder(settings: Settings, backbone: ClipBackbone | None = None) -> SegmentEncoder:
    """The segment encoder ``settings`` ask for, over ``backbone`` (loaded if not given)."""
    return build_encoder(settings.encoder, backbone or load_model(settings), settings.tempme_weights)


def settings_space_key(settings: Settings) -> str:
    """The embedding space ``settings`` produce (as ``embedding_key(load_encoder(settings))``),
    computed without loading the model."""
    key = backbone_key(settings.model, weights_identity(settings.pretrained))
    if settings.encoder == "tempme" and settings.tempme_weights is not None:
        key += f"+tempme-{weights_identity(str(settings.tempme_weights))}"
    return space_key(key, settings.encoder)


def open_index(settings: Settings, catalog: Catalog, key: str, dim: int) -> SegmentIndex:
    """The FAISS index of embedding space ``key`` in ``settings``' index folder."""
    options = IndexOptions(settings.index_type, settings.index_nlist, settings.index_nprobe, settings.index_pq_m)
    return SegmentIndex(catalog, settings.resolved_index_dir, key, dim, options, settings.index_refresh_seconds)


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

    def ingestor(self) -> VideoIngestor:
        return VideoIngestor(self.settings, self.catalog, self.encoder, self.llm)

    def api_context(self) -> ApiContext:
        return ApiContext(
            settings=self.settings,
            catalog=self.catalog,
            index=self.index,
            queries=self.queries,
            ingestion=self.queue,
            model_name=self.backbone.key,
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


def build_runtime(settings: Settings, backbone: ClipBackbone | None = None, banner: str | None = None) -> Runtime:
    catalog = open_catalog(settings)
    backbone = backbone or load_model(settings)
    encoder = load_encoder(settings, backbone)
    index = open_index(settings, catalog, embedding_key(encoder), backbone.embed_dim)

    def encode_query(text: str):
        return backbone.encode_text([text])[0].cpu().numpy()

    llm = lazy_llm(settings)
    reranking = build_reranking(settings, catalog, encoder, llm)
    queries = QueryService(catalog, index, encode_query, settings.search_candidates, reranking)
    queue: IngestionQueue
    if settings.runs_in_process:
        queue = InProcessQueue(LazyIngestor(lambda: VideoIngestor(settings, catalog, encoder, llm)))
    else:
        queue = CeleryQueue(make_celery(settings))
    return Runtime(settings, catalog, backbone, encoder, index, queries, queue, banner, llm)


def create_service_app(settings: Settings | None = None) -> Flask:
    """The WSGI app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    runtime = build_runtime(settings)
    runtime.index.refresh(force=True)
    return create_app(runtime.api_context())
