"""The FAISS index kept in step with the catalog (the source of truth).

Each process that answers queries holds a :class:`SegmentIndex`. It starts from the last
saved snapshot in ``VIDSEEK_INDEX_DIR`` (if it was built for the same embedding space) and
catches up from the catalog: segments with ids above its watermark are added, tombstones
above its tombstone watermark are removed. Catalog writers commit segment ids in order (see
``search.catalog``), so a watermark never skips one. Snapshots are written atomically under a
file lock, at most every ``save_interval`` seconds, so several API replicas can share a folder.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from search.catalog import Catalog
from search.vector_index import IndexState, VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    added: int
    removed: int
    total: int


class SegmentIndex:
    """Segment embeddings of one embedding space (``embedding_key``), searchable by FAISS."""

    def __init__(
        self,
        catalog: Catalog,
        folder: Path,
        embedding_key: str,
        dim: int,
        kind: str = "flat",
        refresh_seconds: float = 2.0,
        save_interval: float = 60.0,
    ):
        self.catalog, self.folder = catalog, folder
        self.refresh_seconds, self.save_interval = refresh_seconds, save_interval
        self._lock = threading.Lock()
        self._last_refresh = -float("inf")
        self._last_save = time.monotonic()
        self._dirty = False
        loaded = VectorIndex.load(folder)
        if loaded and (loaded[1].embedding_key, loaded[1].dim, loaded[1].kind) == (embedding_key, dim, kind):
            self.index, self.state = loaded
            log.info("index snapshot loaded", extra={"segments": len(self.index), "folder": str(folder)})
        else:
            self.index = VectorIndex(dim, kind)
            self.state = IndexState(embedding_key, dim, kind, 0, catalog.max_tombstone_id())

    def __len__(self) -> int:
        return len(self.index)

    def refresh(self, force: bool = False) -> SyncReport:
        """Apply catalog changes since the watermarks (at most every ``refresh_seconds`` unless forced)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_refresh < self.refresh_seconds:
                return SyncReport(0, 0, len(self.index))
            self._last_refresh = now
            tomb_id, deleted = self.catalog.tombstones_after(self.state.tombstone_watermark)
            if deleted:
                self.index.remove(np.asarray(deleted, np.int64))
            added = 0
            for ids, vectors in self.catalog.iter_embeddings(self.state.embedding_key, self.state.segment_watermark):
                self.index.add(ids, vectors)
                self.state.segment_watermark = int(ids[-1])
                added += len(ids)
            self.state.tombstone_watermark = tomb_id
            self._dirty |= bool(added or deleted)
            if self._dirty and time.monotonic() - self._last_save >= self.save_interval:
                self._save_locked()
            return SyncReport(added, len(deleted), len(self.index))

    def rebuild(self) -> SyncReport:
        """Throw the index away and rebuild it from every catalog segment of this embedding space."""
        with self._lock:
            tomb = self.catalog.max_tombstone_id()
            chunks = list(self.catalog.iter_embeddings(self.state.embedding_key, 0))
            fresh = VectorIndex(self.state.dim, self.state.kind)
            if chunks:
                ids = np.concatenate([c[0] for c in chunks])
                fresh.add(ids, np.concatenate([c[1] for c in chunks]))
                self.state.segment_watermark = int(ids.max())
            else:
                self.state.segment_watermark = 0
            self.state.tombstone_watermark = tomb
            self.index = fresh
            self._save_locked()
            return SyncReport(len(fresh), 0, len(fresh))

    def search(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Refresh if due, then the top-``n`` segments for one query ``[D]``: ``(scores [n'], ids [n'])``."""
        self.refresh()
        scores, ids = self.index.search(query[None, :], n)
        return scores[0], ids[0]

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        with _folder_lock(self.folder):
            self.index.save(self.folder, self.state)
        self._dirty = False
        self._last_save = time.monotonic()


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
