"""What people set on videos (title, tags) and the full-text search over it (``search.text_search``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, update

from search.filters import SearchFilters
from search.store import Store, int_ids
from search.tables import Video, VideoTag
from search.text_search import text_ranking_query


class MetadataStore(Store):
    """Titles and tags of videos, and their ranking by the words of a query."""

    def set_metadata(self, video_id: int, title: str | None = None, tags: Sequence[str] | None = None) -> Video | None:
        """Set the video's ``title`` and/or replace its ``tags`` (both already normalised, see
        ``search.video_metadata``; None: unchanged), in one transaction; the full-text document follows
        (a generated column on PostgreSQL, triggers on SQLite). ``updated_at`` stays when ingestion last
        wrote the video (the web page shows it as the indexing time). Returns the video, None if there is none."""
        with self.session() as s:
            if s.get(Video, video_id, with_for_update=True) is None:
                return None
            values: dict[str, str] = {}
            if title is not None:
                values["title"] = title
            if tags is not None:
                s.execute(delete(VideoTag).where(VideoTag.video_id == video_id))
                s.add_all(VideoTag(video_id=video_id, tag=t) for t in sorted(set(tags)))
                values["tag_words"] = " ".join(sorted(set(tags)))
            if values:
                s.execute(update(Video).where(Video.id == video_id).values(**values, updated_at=Video.updated_at))
            s.flush()
            return s.get(Video, video_id, populate_existing=True)

    def tags_of(self, video_ids: Sequence[int]) -> dict[int, list[str]]:
        """The tags of each of ``video_ids`` (sorted; a video without tags is absent)."""
        if not video_ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(VideoTag.video_id, VideoTag.tag).where(VideoTag.video_id.in_(int_ids(video_ids)))
                             .order_by(VideoTag.video_id, VideoTag.tag)).all()
        tags: dict[int, list[str]] = {}
        for video_id, tag in rows:
            tags.setdefault(int(video_id), []).append(tag)
        return tags

    def text_ranking(self, words: list[str], filters: SearchFilters | None, embedding_key: str, limit: int) -> list[int]:
        """Ids of the best ``limit`` videos whose title, file name or tags hold any of ``words`` (see
        ``search.text_search``), best first, among those matching ``filters`` that have segments
        embedded with ``embedding_key``; empty when ``words`` is."""
        if not words:
            return []
        statement = text_ranking_query(self.engine.dialect.name, words, filters, embedding_key, limit)
        return [int(row[0]) for row in self.read(statement)]
