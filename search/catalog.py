"""The catalog: vidseek's source of truth, one database holding two stores.

- :class:`~search.job_store.JobStore`: ingestion jobs and the leases of the workers running them;
- :class:`~search.video_store.VideoStore`: videos, segments, summaries and the change feed that
  index replicas follow;
- :class:`~search.metadata_store.MetadataStore`: the titles and tags people set, and full-text search
  over them;
- :class:`~search.space_store.SpaceStore`: the embedding spaces (which one is active, which one a
  re-index builds).

:class:`Catalog` is both (one engine, one session factory); callers that need only one side may
type against the store they use.
"""

from __future__ import annotations

from search.job_store import JobLeased, JobStore, StaleJob
from search.metadata_store import MetadataStore
from search.space_store import SpaceStore
from search.tables import CLIP_SPACE
from search.video_store import (
    EmbeddingBatch,
    NamedSegment,
    SegmentMeta,
    SegmentRecord,
    SummaryRecord,
    VideoName,
    VideoStore,
    embedding_from_bytes,
    embedding_to_bytes,
)

__all__ = [
    "CLIP_SPACE", "Catalog", "EmbeddingBatch", "JobLeased", "JobStore", "NamedSegment", "SegmentMeta", "SegmentRecord", "StaleJob", "SummaryRecord",
    "VideoName", "VideoStore", "embedding_from_bytes", "embedding_to_bytes",
]


class Catalog(JobStore, VideoStore, MetadataStore, SpaceStore):
    """The catalog database (SQLite or PostgreSQL): jobs, videos, segments, tags, embedding spaces."""
