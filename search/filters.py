"""Exact filters on a search: which videos may be returned (by id, duration, folder, tags, and when
they were added to the catalog).

The query side turns them into the set of allowed segment ids with one catalog query
(:meth:`search.video_store.VideoStore.segment_ids_where`), and FAISS searches only those ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import ColumnElement, func, select

from search.media_paths import confine
from search.tables import Video, VideoTag
from search.video_metadata import MAX_TAGS, MetadataError, normalise_tag

MAX_FILTER_IDS = 1000  # video ids one search may name
MAX_OFFSET = 1000  # ranked videos one search may skip
MAX_ID = 2**63 - 1  # ids are bounded like the database's


class FilterError(ValueError):
    """A filter value that cannot be used (negative duration, min above max, too many ids)."""


@dataclass(frozen=True)
class SearchFilters:
    """Only videos matching every given field are searched; None: no constraint.

    ``folder`` is a resolved path already confined to the media roots (see
    ``search.media_paths.confine``): a video matches when its file lies under it.
    Durations are seconds of the whole video. ``tags``: a video matches when it has every one of them
    (normalised as stored, ``search.video_metadata``). ``ingested_after`` / ``ingested_before``: when
    the video was added to the catalog (``created_at``), ``ingested_after <= created_at <
    ingested_before``; timezone-aware (a naive one is UTC), kept in UTC.
    """

    video_ids: tuple[int, ...] | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    folder: Path | None = None
    tags: tuple[str, ...] | None = None
    ingested_after: datetime | None = None
    ingested_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.video_ids is not None and not 1 <= len(self.video_ids) <= MAX_FILTER_IDS:
            raise FilterError(f"video_ids must name 1 to {MAX_FILTER_IDS} videos")
        if self.video_ids is not None and any(not 0 <= i <= MAX_ID for i in self.video_ids):
            raise FilterError(f"video_ids must be between 0 and {MAX_ID}")
        for name in ("min_duration", "max_duration"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise FilterError(f"{name} must be a non-negative number of seconds")
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise FilterError("min_duration must not exceed max_duration")
        if self.tags is not None:
            object.__setattr__(self, "tags", filter_tags(self.tags))
        for name in ("ingested_after", "ingested_before"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, in_utc(getattr(self, name), name))
        if self.ingested_after is not None and self.ingested_before is not None and self.ingested_after >= self.ingested_before:
            raise FilterError("ingested_after must be before ingested_before")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.video_ids, self.min_duration, self.max_duration, self.folder, self.tags,
                                           self.ingested_after, self.ingested_before))

    def clauses(self) -> list[ColumnElement[bool]]:
        """WHERE conditions on ``videos`` (by primary key, duration and path prefix)."""
        where: list[ColumnElement[bool]] = []
        if self.video_ids is not None:
            where.append(Video.id.in_([int(i) for i in self.video_ids]))
        if self.min_duration is not None:
            where.append(Video.duration >= self.min_duration)
        if self.max_duration is not None:
            where.append(Video.duration <= self.max_duration)
        if self.folder is not None:
            prefix = str(self.folder).rstrip("/") + "/"  # compared exactly: SQLite's LIKE ignores case
            where.append(func.substr(Video.path, 1, len(prefix)) == prefix)
        if self.tags is not None:  # the videos holding all the tags, read from the (tag, video_id) index
            holding = (select(VideoTag.video_id).where(VideoTag.tag.in_(self.tags))
                       .group_by(VideoTag.video_id).having(func.count() == len(self.tags)))
            where.append(Video.id.in_(holding))
        if self.ingested_after is not None:
            where.append(Video.created_at >= self.ingested_after)
        if self.ingested_before is not None:
            where.append(Video.created_at < self.ingested_before)
        return where


def filter_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct normalised tags a search requires (1 to ``MAX_TAGS``)."""
    try:
        distinct = tuple(sorted({normalise_tag(t) for t in tags}))
    except MetadataError as exc:
        raise FilterError(str(exc)) from None
    if not 1 <= len(distinct) <= MAX_TAGS:
        raise FilterError(f"tags must name 1 to {MAX_TAGS} tags")
    return distinct


def in_utc(moment: datetime, name: str) -> datetime:
    """``moment`` in UTC; a naive one is taken as UTC. SQLite stores UTC without an offset, so every
    bound is compared in UTC on both databases."""
    try:
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    except OverflowError:
        raise FilterError(f"{name} is out of range") from None


def parse_instant(text: str, name: str) -> datetime:
    """An ISO 8601 date or date and time (``2026-05-01``, ``2026-05-01T12:00:00+02:00``, ``...Z``) in
    UTC; without an offset it is UTC. :class:`FilterError` names ``name`` when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"{name} must be an ISO 8601 date or date and time, such as 2026-05-01T12:00:00+02:00") from None
    return in_utc(moment, name)


def confined_filters(video_ids: list[int] | tuple[int, ...] | None, min_duration: float | None,
                     max_duration: float | None, folder: str | Path | None, roots: tuple[Path, ...],
                     tags: list[str] | tuple[str, ...] | None = None, ingested_after: str | None = None,
                     ingested_before: str | None = None) -> SearchFilters:
    """The filters of a request (API or CLI): ``folder`` resolved and confined to the media ``roots``
    (``search.media_paths.PathNotAllowed`` otherwise), the ``ingested_*`` bounds parsed from ISO 8601
    (:func:`parse_instant`); :class:`FilterError` for a bad value."""
    confined = confine(folder, roots) if folder else None
    after = parse_instant(ingested_after, "ingested_after") if ingested_after else None
    before = parse_instant(ingested_before, "ingested_before") if ingested_before else None
    return SearchFilters(None if video_ids is None else tuple(video_ids), min_duration, max_duration, confined,
                         None if tags is None else tuple(tags), after, before)


def check_min_score(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise FilterError("min_score must be a number between -1 and 1 (a cosine similarity)")
    return value


def check_offset(value: int) -> int:
    if not 0 <= value <= MAX_OFFSET:
        raise FilterError(f"offset must be between 0 and {MAX_OFFSET}")
    return value
