"""Exact filters on a search: which videos may be returned (by id, duration, folder).

The query side turns them into the set of allowed segment ids with one catalog query
(:meth:`search.video_store.VideoStore.segment_ids_where`), and FAISS searches only those ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, func

from search.media_paths import confine
from search.tables import Video

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
    Durations are seconds of the whole video.
    """

    video_ids: tuple[int, ...] | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    folder: Path | None = None

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

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.video_ids, self.min_duration, self.max_duration, self.folder))

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
        return where


def confined_filters(video_ids: list[int] | tuple[int, ...] | None, min_duration: float | None,
                     max_duration: float | None, folder: str | Path | None, roots: tuple[Path, ...]) -> SearchFilters:
    """The filters of a request (API or CLI): ``folder`` resolved and confined to the media ``roots``
    (``search.media_paths.PathNotAllowed`` otherwise); :class:`FilterError` for a bad value."""
    confined = confine(folder, roots) if folder else None
    return SearchFilters(None if video_ids is None else tuple(video_ids), min_duration, max_duration, confined)


def check_min_score(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise FilterError("min_score must be a number between -1 and 1 (a cosine similarity)")
    return value


def check_offset(value: int) -> int:
    if not 0 <= value <= MAX_OFFSET:
        raise FilterError(f"offset must be between 0 and {MAX_OFFSET}")
    return value
