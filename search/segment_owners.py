"""Which video each indexed segment belongs to, held in memory beside the FAISS index.

The query path groups segment hits by video before it reads anything from the catalog, so that it
reads only the segments it returns (at most ``k`` videos x 4 moments) instead of every candidate the
index gave (200 or more). The map is a copy of ``segments.video_id`` for the ids the index holds,
kept in step with it by :class:`search.segment_index.SegmentIndex` (same additions, same
tombstones) and saved in its snapshot; like the index it can always be rebuilt from the catalog.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OWNERS_FILE = "segments.owners.npy"
UNKNOWN = -1  # the video of a segment the map does not hold


@dataclass(frozen=True)
class _Table:
    """Sorted segment ids int64 ``[n]`` and their videos int64 ``[n]``."""

    ids: np.ndarray
    videos: np.ndarray


_EMPTY = _Table(np.zeros(0, np.int64), np.zeros(0, np.int64))


class SegmentOwners:
    """segment id -> video id, for lookups of a few hundred ids per query (binary search over sorted
    arrays: 16 bytes a segment). Additions are buffered until :meth:`merge` (the index's refresh calls
    it, so a query does not pay for it; a lookup merges what is still buffered); the table is
    replaced, never changed in place, so lookups need no lock."""

    def __init__(self, ids: np.ndarray | None = None, videos: np.ndarray | None = None):
        self._table = _EMPTY
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()
        if ids is not None and videos is not None:
            self.add(ids, videos)

    def __len__(self) -> int:
        return len(self._merged().ids)

    def add(self, ids: np.ndarray, videos: np.ndarray) -> None:
        """Record that segments ``ids`` int64 ``[n]`` belong to ``videos`` int64 ``[n]`` (an id
        already held takes the new video)."""
        if len(ids) != len(videos):
            raise ValueError(f"{len(ids)} segment ids but {len(videos)} video ids")
        if len(ids):
            with self._lock:
                self._pending.append((np.asarray(ids, np.int64), np.asarray(videos, np.int64)))

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Forget segments ``ids`` (those not held are ignored)."""
        gone = np.asarray(ids, np.int64)
        if not len(gone):
            return
        with self._lock:
            table = self._merge_locked()
            keep = ~np.isin(table.ids, gone)
            self._table = _Table(table.ids[keep], table.videos[keep])

    def videos_of(self, ids: np.ndarray) -> np.ndarray:
        """The videos of segments ``ids`` int64 ``[n]``: int64 ``[n]``, :data:`UNKNOWN` where not held."""
        table = self._merged()
        ids = np.asarray(ids, np.int64)
        if not len(table.ids):
            return np.full(len(ids), UNKNOWN, np.int64)
        at = np.minimum(np.searchsorted(table.ids, ids), len(table.ids) - 1)
        return np.where(table.ids[at] == ids, table.videos[at], UNKNOWN)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(segment ids, video ids)`` held, by segment id."""
        table = self._merged()
        return table.ids, table.videos

    def merge(self) -> None:
        """Fold buffered additions into the table."""
        self._merged()

    def _merged(self) -> _Table:
        if not self._pending:
            return self._table
        with self._lock:
            return self._merge_locked()

    def _merge_locked(self) -> _Table:
        if not self._pending:
            return self._table
        ids = np.concatenate([self._table.ids, *(i for i, _ in self._pending)])
        videos = np.concatenate([self._table.videos, *(v for _, v in self._pending)])
        self._pending = []
        if len(ids) > 1 and (np.diff(ids) > 0).all():  # the usual case: new ids past every held one
            self._table = _Table(ids, videos)
            return self._table
        # a stable sort keeps the latest addition of an id last among its equals; keep that one
        order = np.argsort(ids, kind="stable")
        ids, videos = ids[order], videos[order]
        last = np.ones(len(ids), bool)
        last[:-1] = ids[1:] != ids[:-1]
        self._table = _Table(ids[last], videos[last])
        return self._table

    # ----- persistence (inside SegmentIndex's snapshot, under its folder lock) -----------------
    def save(self, folder: Path) -> None:
        """Write ``folder/segments.owners.npy`` (``[2, n]``: ids, videos) atomically."""
        table = self._merged()
        tmp = folder / f".{OWNERS_FILE}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            np.save(fh, np.stack([table.ids, table.videos]))
        tmp.replace(folder / OWNERS_FILE)

    @classmethod
    def load(cls, folder: Path) -> SegmentOwners | None:
        """The map saved in ``folder``, or None when there is none or it is unreadable."""
        try:
            stored = np.load(folder / OWNERS_FILE, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if stored.ndim != 2 or stored.shape[0] != 2 or stored.dtype != np.int64:
            return None
        return cls(stored[0], stored[1])
