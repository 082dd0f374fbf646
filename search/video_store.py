"""Videos, their segments (with embeddings) and summaries, and the change feed index replicas follow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from search.filters import SearchFilters
from search.store import IdLookup, Store, count_by_status, delete_segments, int_ids, serialize_segment_writes
from search.tables import CLIP_SPACE, Segment, SegmentTombstone, Status, Video, VideoSummaryRow


@dataclass(frozen=True)
class SegmentRecord:
    """A segment ready to be written: times in seconds, ``embedding`` float32 ``[D]``."""

    ordinal: int
    start: float
    end: float
    frame_count: int
    thumbnail: str | None
    embedding: np.ndarray


@dataclass(frozen=True)
class SummaryRecord:
    """A video's compressed token summary, serialised (``models.summary.VideoSummary.to_bytes``).

    ``space`` names the token space (``clip`` or ``llm``, one summary per video and space);
    ``embedding_key`` identifies the model within it (None when written: the segments' key).
    """

    method: str
    token_count: int
    data: bytes
    space: str = CLIP_SPACE
    embedding_key: str | None = None


@dataclass(frozen=True)
class SegmentMeta:
    """What the query side needs of a segment hit."""

    id: int
    video_id: int
    start: float
    end: float
    thumbnail: str | None


@dataclass(frozen=True)
class EmbeddingBatch:
    """Segments of one embedding space in id order, as index replicas read them: ``ids``,
    ``video_ids`` int64 ``[n]``, ``vectors`` float32 ``[n, D]``."""

    ids: np.ndarray
    video_ids: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class SegmentRows:
    """Segments of one embedding space with their videos' names, in id order, for export.

    ``ids``, ``video_ids``: int64 ``[n]``; ``starts``, ``ends``: float64 ``[n]`` seconds;
    ``paths``, ``titles``: ``n`` strings; ``embeddings``: float32 ``[n, D]``.
    """

    ids: np.ndarray
    video_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    paths: list[str]
    titles: list[str]
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class VideoName:
    """How a video is named to people: its ``title`` (the file's stem), and the file's ``file_name`` and
    the name of its ``folder`` (never the absolute path), to tell apart files with the same stem."""

    title: str
    file_name: str
    folder: str

    @classmethod
    def of(cls, title: str, path: str) -> VideoName:
        p = Path(path)
        return cls(title, p.name, p.parent.name)


@dataclass(frozen=True)
class NamedSegment:
    """A segment hit as results show it: the segment and its video's name."""

    meta: SegmentMeta
    name: VideoName


# The columns of a SegmentMeta, in its field order.
_SEGMENT_META = select(Segment.id, Segment.video_id, Segment.start, Segment.end, Segment.thumbnail)
# The query path's lookups by id (one read each, see search.store.IdLookup).
_NAMED_SEGMENTS_BY_ID = IdLookup.of(
    _SEGMENT_META.add_columns(Video.title, Video.path).join(Video, Video.id == Segment.video_id), Segment.id
)
_SEGMENT_VECTORS_BY_ID = IdLookup.of(select(Segment.id, Segment.embedding), Segment.id)
_SEGMENT_SPACES_BY_VIDEO = IdLookup.of(select(Segment.id, Segment.embedding_key), Segment.video_id)


def embedding_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def embedding_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _remove_segments(s: Session, video_id: int, keep_keys: Sequence[str] = ()) -> list[tuple[int, str | None]]:
    """Delete a video's segments (but those in the spaces ``keep_keys``), tombstoned so index replicas
    drop them; returns their (id, thumbnail)."""
    serialize_segment_writes(s)
    return delete_segments(s, Segment.video_id == video_id, Segment.embedding_key.not_in(list(keep_keys)))


def _segment_rows(video_id: int, segments: Sequence[SegmentRecord], embedding_key: str) -> list[Segment]:
    return [
        Segment(
            video_id=video_id,
            ordinal=r.ordinal,
            start=r.start,
            end=r.end,
            frame_count=r.frame_count,
            thumbnail=r.thumbnail,
            embedding_key=embedding_key,
            embedding=embedding_to_bytes(r.embedding),
        )
        for r in segments
    ]


def _summaries_of(video_ids: Sequence[int], embedding_key: str, space: str) -> list[ColumnElement[bool]]:
    """The WHERE clause selecting the summaries of ``video_ids`` in ``space`` made by ``embedding_key``."""
    return [
        VideoSummaryRow.video_id.in_(int_ids(video_ids)),
        VideoSummaryRow.space == space,
        VideoSummaryRow.embedding_key == embedding_key,
    ]


def _set(s: Session, video_id: int, values: dict[str, Any]) -> None:
    s.execute(update(Video).where(Video.id == video_id).values(**values))


class VideoStore(Store):
    """Videos and what ingestion derived from them; the query side and index replicas read it."""

    # ----- videos --------------------------------------------------------------------------
    def get_video(self, video_id: int) -> Video | None:
        with self.session() as s:
            return s.get(Video, video_id)

    def find_video_by_hash(self, content_hash: str) -> Video | None:
        with self.session() as s:
            return s.scalar(select(Video).where(Video.content_hash == content_hash))

    def list_videos(self, limit: int = 50, offset: int = 0, status: Status | None = None) -> tuple[list[Video], int]:
        """A page of videos, newest first (only those in ``status`` if given), and their total."""
        where = [Video.status == status] if status is not None else []
        with self.session() as s:
            total = s.scalar(select(func.count(Video.id)).where(*where)) or 0
            rows = s.scalars(select(Video).where(*where).order_by(Video.id.desc()).limit(limit).offset(offset)).all()
            return list(rows), total

    def get_or_create_video(self, path: Path, content_hash: str, size_bytes: int) -> Video:
        """The video with this content hash, created (queued) if new. Safe under concurrent calls."""
        existing = self.find_video_by_hash(content_hash)
        if existing is not None:
            return existing
        try:
            with self.session() as s:
                video = Video(path=str(path), title=path.stem, content_hash=content_hash, size_bytes=size_bytes)
                s.add(video)
                s.flush()
                return video
        except IntegrityError:  # another worker created it first
            found = self.find_video_by_hash(content_hash)
            assert found is not None
            return found

    def status_counts(self) -> dict[Status, int]:
        """How many videos are in each status (every status present, zero included)."""
        with self.session() as s:
            return count_by_status(s, Video)

    def videos_with_path(self, path: str) -> int:
        """How many videos say their file is at ``path``."""
        with self.session() as s:
            return int(s.scalar(select(func.count(Video.id)).where(Video.path == path)) or 0)

    def mark_video_running(self, video_id: int, path: Path) -> None:
        """The video is being (re-)indexed from the file at ``path``."""
        with self.session() as s:
            _set(s, video_id, {"status": Status.running, "error": None, "path": str(path)})

    def fail_video(self, video_id: int, reason: str) -> None:
        with self.session() as s:
            _set(s, video_id, {"status": Status.failed, "error": reason})

    def delete_video(self, video_id: int) -> list[str] | None:
        """Delete a video with its segments (tombstoned for the index). Returns the segments'
        thumbnail paths to remove, or None if there was no such video."""
        with self.session() as s:
            video = s.get(Video, video_id)
            if video is None:
                return None
            removed = _remove_segments(s, video_id)
            s.delete(video)
            return [thumb for _, thumb in removed if thumb]

    # ----- segments and summaries ----------------------------------------------------------
    def replace_segments(
        self,
        video_id: int,
        segments: Sequence[SegmentRecord],
        embedding_key: str,
        summaries: Sequence[SummaryRecord] = (),
        keep_keys: Sequence[str] = (),
        **video_values: object,
    ) -> list[int]:
        """Atomically swap a video's segments and summaries (at most one per space) for new ones and
        mark the video done. A summary without an ``embedding_key`` gets the segments' key.

        Old segments are tombstoned so index replicas drop them, but those in the embedding spaces
        ``keep_keys`` (the other spaces a re-index keeps, ``search.space_store``). Returns the new
        segment ids.
        """
        if len({r.space for r in summaries}) != len(summaries):
            raise ValueError("at most one summary per space")
        with self.session() as s:
            s.execute(delete(VideoSummaryRow).where(VideoSummaryRow.video_id == video_id))
            s.add_all(
                VideoSummaryRow(video_id=video_id, space=r.space, method=r.method, embedding_key=r.embedding_key or embedding_key,
                                token_count=r.token_count, data=r.data)
                for r in summaries
            )
            _remove_segments(s, video_id, [k for k in keep_keys if k != embedding_key])
            rows = _segment_rows(video_id, segments, embedding_key)
            s.add_all(rows)
            _set(s, video_id, {"status": Status.done, "error": None, "embedding_key": embedding_key, **video_values})
            s.flush()
            return [r.id for r in rows]

    def replace_space_segments(self, video_id: int, segments: Sequence[SegmentRecord], embedding_key: str) -> list[int]:
        """Atomically swap a video's segments in embedding space ``embedding_key`` only (a re-index into
        a space being built): its segments in other spaces, its summaries and its status stay as they
        are. Returns the new segment ids."""
        with self.session() as s:
            serialize_segment_writes(s)
            delete_segments(s, Segment.video_id == video_id, Segment.embedding_key == embedding_key)
            rows = _segment_rows(video_id, segments, embedding_key)
            s.add_all(rows)
            s.flush()
            return [r.id for r in rows]

    def summaries(self, video_ids: Sequence[int], embedding_key: str, space: str = CLIP_SPACE) -> dict[int, SummaryRecord]:
        """Stored summaries of ``video_ids`` in token space ``space`` computed by model ``embedding_key``."""
        if not video_ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(VideoSummaryRow).where(*_summaries_of(video_ids, embedding_key, space))).all()
        return {r.video_id: SummaryRecord(r.method, r.token_count, r.data, r.space, r.embedding_key) for r in rows}

    def summary_stamps(self, video_ids: Sequence[int], embedding_key: str, space: str = CLIP_SPACE) -> dict[int, datetime]:
        """When each of these videos' summaries (as :meth:`summaries` selects them) was written -- a cheap
        version tag for caches: re-ingestion writes a new row."""
        if not video_ids:
            return {}
        with self.session() as s:
            rows = s.execute(
                select(VideoSummaryRow.video_id, VideoSummaryRow.created_at).where(*_summaries_of(video_ids, embedding_key, space))
            ).all()
        return {r.video_id: r.created_at for r in rows}

    def named_segments(self, segment_ids: Sequence[int]) -> dict[int, NamedSegment]:
        """The segments of ``segment_ids`` that exist, each with its video's name (one read)."""
        if not segment_ids:
            return {}
        rows = self.rows_with_ids(_NAMED_SEGMENTS_BY_ID, segment_ids)
        return {r.id: NamedSegment(SegmentMeta(*r[:5]), VideoName.of(r.title, r.path)) for r in rows}

    def segment_ids_where(self, filters: SearchFilters, embedding_key: str) -> np.ndarray:
        """Ids of the segments embedded with ``embedding_key`` whose video matches ``filters``
        (sorted int64 ``[n]``): one query, videos filtered first, segments reached by their
        ``video_id`` index."""
        with self.session() as s:
            ids = s.scalars(
                select(Segment.id).join(Video, Segment.video_id == Video.id)
                .where(Segment.embedding_key == embedding_key, *filters.clauses())
                .order_by(Segment.id)
            ).all()
        return np.asarray(ids, dtype=np.int64)

    def segment_ids_of(self, video_ids: Sequence[int], embedding_key: str) -> np.ndarray:
        """Ids of the segments of ``video_ids`` embedded with ``embedding_key`` (sorted int64 ``[n]``): one
        read by the ``video_id`` index, the key compared here (on SQLite without statistics, a WHERE on
        the key makes the planner walk the ``embedding_key`` index over every segment instead)."""
        rows = self.rows_with_ids(_SEGMENT_SPACES_BY_VIDEO, video_ids) if video_ids else []
        return np.asarray(sorted(r.id for r in rows if r.embedding_key == embedding_key), dtype=np.int64)

    def segment_at(self, video_id: int, seconds: float) -> SegmentMeta | None:
        """The video's segment that holds ``seconds``: the last one starting at or before it (the first
        one for a time before every start); None when the video has no segments."""
        of_video = _SEGMENT_META.where(Segment.video_id == video_id)
        with self.session() as s:
            row = s.execute(of_video.where(Segment.start <= seconds).order_by(Segment.start.desc()).limit(1)).first()
            row = row or s.execute(of_video.order_by(Segment.start).limit(1)).first()
        return SegmentMeta(*row) if row else None

    def get_segment(self, segment_id: int) -> Segment | None:
        with self.session() as s:
            return s.get(Segment, segment_id)

    def segments_of(self, video_id: int, embedding_key: str | None = None) -> list[Segment]:
        """The video's segments (only those in space ``embedding_key`` when given), in order."""
        in_space = [Segment.embedding_key == embedding_key] if embedding_key is not None else []
        with self.session() as s:
            return list(s.scalars(select(Segment).where(Segment.video_id == video_id, *in_space).order_by(Segment.ordinal)))

    def segment_counts(self, video_ids: Sequence[int], embedding_key: str | None = None) -> dict[int, int]:
        """Segments stored per video (only those in space ``embedding_key`` when given), for those of
        ``video_ids`` that have any."""
        if not video_ids:
            return {}
        in_space = [Segment.embedding_key == embedding_key] if embedding_key is not None else []
        with self.session() as s:
            rows = s.execute(
                select(Segment.video_id, func.count(Segment.id))
                .where(Segment.video_id.in_(int_ids(video_ids)), *in_space)
                .group_by(Segment.video_id)
            ).all()
        return {int(r[0]): int(r[1]) for r in rows}

    def count_summaries(self, embedding_key: str, space: str = CLIP_SPACE) -> int:
        """Videos with a summary in token space ``space`` computed by model ``embedding_key``."""
        with self.session() as s:
            q = select(func.count(VideoSummaryRow.video_id)).where(
                VideoSummaryRow.space == space, VideoSummaryRow.embedding_key == embedding_key)
            return int(s.scalar(q) or 0)

    def count_segments(self, embedding_key: str | None = None) -> int:
        with self.session() as s:
            q = select(func.count(Segment.id))
            if embedding_key is not None:
                q = q.where(Segment.embedding_key == embedding_key)
            return int(s.scalar(q) or 0)

    # ----- the change feed of index replicas -----------------------------------------------
    def iter_embeddings(self, embedding_key: str, after_id: int = 0, batch: int = 4096) -> Iterator[EmbeddingBatch]:
        """Segments with ``id > after_id`` embedded with ``embedding_key``, in id order, in batches."""
        last = after_id
        while True:
            with self.session() as s:
                rows = s.execute(
                    select(Segment.id, Segment.video_id, Segment.embedding)
                    .where(Segment.id > last, Segment.embedding_key == embedding_key)
                    .order_by(Segment.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
            videos = np.fromiter((r.video_id for r in rows), dtype=np.int64, count=len(rows))
            yield EmbeddingBatch(ids, videos, np.stack([embedding_from_bytes(r.embedding) for r in rows]))
            last = int(ids[-1])

    def segment_owners(self, embedding_key: str, up_to: int) -> tuple[np.ndarray, np.ndarray]:
        """``(segment ids, video ids)`` int64 ``[n]`` of the segments embedded with ``embedding_key``
        with ``id <= up_to``, by id (no vectors read)."""
        with self.session() as s:
            rows = s.execute(
                select(Segment.id, Segment.video_id)
                .where(Segment.id <= up_to, Segment.embedding_key == embedding_key)
                .order_by(Segment.id)
            ).all()
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64)

    def segment_rows(self, embedding_key: str, after_id: int, limit: int) -> SegmentRows | None:
        """Up to ``limit`` segments with ``id > after_id`` embedded with ``embedding_key``, in id order
        (one page of a keyset pagination); None when there are no more."""
        with self.session() as s:
            rows = s.execute(
                select(Segment.id, Segment.video_id, Segment.start, Segment.end, Video.path, Video.title, Segment.embedding)
                .join(Video, Video.id == Segment.video_id)
                .where(Segment.id > after_id, Segment.embedding_key == embedding_key)
                .order_by(Segment.id)
                .limit(limit)
            ).all()
        if not rows:
            return None
        return SegmentRows(
            ids=np.array([r.id for r in rows], np.int64),
            video_ids=np.array([r.video_id for r in rows], np.int64),
            starts=np.array([r.start for r in rows], np.float64),
            ends=np.array([r.end for r in rows], np.float64),
            paths=[r.path for r in rows],
            titles=[r.title for r in rows],
            embeddings=np.stack([embedding_from_bytes(r.embedding) for r in rows]),
        )

    def embeddings_of(self, segment_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of those ``segment_ids`` that still exist: ``(ids int64 [n], float32 [n, D])``."""
        rows = self.rows_with_ids(_SEGMENT_VECTORS_BY_ID, segment_ids)
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array([r.id for r in rows], np.int64), np.stack([embedding_from_bytes(r.embedding) for r in rows])

    def max_segment_id(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(Segment.id))) or 0)

    def tombstones_after(self, after_id: int) -> tuple[int, list[int]]:
        """(newest tombstone id, segment ids deleted after ``after_id``)."""
        with self.session() as s:
            rows = s.execute(
                select(SegmentTombstone.id, SegmentTombstone.segment_id)
                .where(SegmentTombstone.id > after_id)
                .order_by(SegmentTombstone.id)
            ).all()
        if not rows:
            return after_id, []
        return rows[-1].id, [r.segment_id for r in rows]

    def max_tombstone_id(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(SegmentTombstone.id))) or 0)
