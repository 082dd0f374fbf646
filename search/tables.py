"""Catalog schema (SQLAlchemy 2.x ORM). The catalog is vidseek's source of truth: the FAISS
index is derived from ``segments`` and can always be rebuilt from it.

Schema changes go through Alembic migrations in ``migrations/versions``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Status(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


StatusColumn = Enum(Status, name="status", native_enum=False, length=16)


class Video(Base):
    """One distinct video file, identified by the SHA-256 of its bytes."""

    __tablename__ = "videos"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(String(512))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    duration: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[Status] = mapped_column(StatusColumn, default=Status.queued, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    embedding_key: Mapped[str | None] = mapped_column(String(255))
    frames_sampled: Mapped[int] = mapped_column(Integer, default=0)
    # The video's tags joined by spaces, for full-text search (``search.text_search``); written with its
    # ``video_tags`` rows, which are the source of truth.
    tag_words: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    segments: Mapped[list["Segment"]] = relationship(
        back_populates="video", cascade="all, delete-orphan", order_by="Segment.ordinal"
    )


MAX_TAG_CHARS = 40  # characters of one tag


class VideoTag(Base):
    """One tag of a video (normalised: see ``search.video_metadata``). A tag filter reads the
    ``(tag, video_id)`` index; the primary key serves a video's own tags."""

    __tablename__ = "video_tags"
    __table_args__ = (Index("ix_video_tags_tag", "tag", "video_id"),)

    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(MAX_TAG_CHARS), primary_key=True)


class Segment(Base):
    """A run of up to ``segment_frames`` sampled frames of a video, with its embedding.

    ``id`` is the FAISS id. ``embedding`` is float32 little-endian bytes of length ``4 * dim``.
    """

    __tablename__ = "segments"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    frame_count: Mapped[int] = mapped_column(Integer)
    thumbnail: Mapped[str | None] = mapped_column(Text)
    embedding_key: Mapped[str] = mapped_column(String(255), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)

    video: Mapped[Video] = relationship(back_populates="segments")


class SegmentTombstone(Base):
    """Segments removed from the catalog, in order, so every index replica can drop them."""

    __tablename__ = "segment_tombstones"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    segment_id: Mapped[int] = mapped_column(BigInteger, index=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """One request to ingest one file; ``video_id`` is known once the file has been hashed."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    video_id: Mapped[int | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"), index=True)
    status: Mapped[Status] = mapped_column(StatusColumn, default=Status.queued, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The lease of the worker running the job: who, and when it last proved it is alive.
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The float type the job's encoder ran at (fp32 / bf16 / fp16); None until it encodes.
    precision: Mapped[str | None] = mapped_column(String(8))
    # A re-indexing job: the embedding space it encodes the video into (None: an ingestion job,
    # into the active space and any space being built; see search.space_store).
    space_key: Mapped[str | None] = mapped_column(String(255), index=True)


class SpaceState(str, enum.Enum):
    active = "active"  # the space searches answer from (at most one)
    building = "building"  # being filled by `vidseek reindex`; becomes active when every video is in it
    retired = "retired"  # was active; its vectors stay until `vidseek reindex --drop-old`


class Space(Base):
    """An embedding space the catalog knows: the model settings that produce it and its state.

    ``key`` is ``models.factory.embedding_space_key(model, pretrained, encoder, tempme_weights)``.
    No row at all means a catalog that never re-indexed: its space is the one the settings name.
    """

    __tablename__ = "spaces"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    pretrained: Mapped[str] = mapped_column(Text)
    encoder: Mapped[str] = mapped_column(String(32))
    tempme_weights: Mapped[str | None] = mapped_column(Text)
    state: Mapped[SpaceState] = mapped_column(Enum(SpaceState, name="space_state", native_enum=False, length=16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


CLIP_SPACE = "clip"  # summary tokens in the CLIP ViT's hidden space (late-interaction reranking)
LLM_SPACE = "llm"  # summary tokens in a video LLM's visual input space (llm reranking)


class VideoSummaryRow(Base):
    """A compressed token summary of a video (``models.summary.VideoSummary.to_bytes``), one per
    token space: ``clip`` (the CLIP ViT's) and ``llm`` (the video LLM reranker's)."""

    __tablename__ = "video_summaries"

    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(16), primary_key=True, default=CLIP_SPACE)
    method: Mapped[str] = mapped_column(String(32))
    embedding_key: Mapped[str] = mapped_column(String(255))
    token_count: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
