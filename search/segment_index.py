"""The FAISS index kept in step with the catalog (the source of truth).

Each process that answers queries holds a :class:`SegmentIndex`. It starts from the last
saved snapshot in ``VIDSEEK_INDEX_DIR`` (if it was built for the same embedding space) and
catches up from the catalog: segments with ids above its watermark are added, tombstones
above its tombstone watermark are removed. Catalog writers commit segment ids in order (see
``search.catalog``), so a watermark never skips one. Snapshots are written atomically under an
exclusive file lock, at most every ``save_interval`` seconds, and read under a shared one, so
several API replicas can share a folder and none ever loads an index file with the state file
of another snapshot. Query processes are the only writers of the index; ingestion workers only
write the catalog. Beside the index it keeps which video each segment belongs to
(:mod:`search.segment_owners`), in the same snapshot, so a query groups its hits by video before it
reads the catalog.

:meth:`SegmentIndex.verify` compares the index with the catalog (ids, duplicates, vectors, videos) and
repairs it (``vidseek index verify``).
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from search.catalog import Catalog
from search.periodic import run_periodically
from search.segment_owners import SegmentOwners
from search.vector_index import TRAINED_KINDS, IndexOptions, IndexState, VectorIndex

log = logging.getLogger(__name__)


MAX_TRAINING_SAMPLE = 1_000_000
VECTOR_TOLERANCE = 1e-4
RESCORE_BATCH = 10_000  # segment ids per catalog read when scoring exactly


@dataclass(frozen=True)
class SyncReport:
    added: int
    removed: int
    total: int


@dataclass(frozen=True)
class VerifyReport:
    """How the index differs from the catalog (segments of its embedding space up to its watermark)."""

    catalog: int  # segments in the catalog
    indexed: int  # entries in the index
    missing: int  # in the catalog, not in the index
    extra: int  # in the index, not in the catalog (deleted, or never there)
    duplicated: int  # ids stored more than once
    mismatched: int  # stored vector (not checked for IVF-PQ, which is lossy) or video differs from the catalog's
    repaired: bool

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.extra or self.duplicated or self.mismatched)


class SegmentIndex:
    """Segment embeddings of one embedding space (``embedding_key``), searchable by FAISS."""

    def __init__(
        self,
        catalog: Catalog,
        folder: Path,
        embedding_key: str,
        dim: int,
        kind: str | IndexOptions = "flat",
        refresh_seconds: float = 2.0,
        save_interval: float = 60.0,
    ):
        self.catalog, self.folder = catalog, folder
        self.options = kind if isinstance(kind, IndexOptions) else IndexOptions(kind)
        self.refresh_seconds, self.save_interval = refresh_seconds, save_interval
        self._lock = threading.Lock()
        self._last_refresh = -float("inf")  # when the last refresh started, successful or not
        self._last_success = -float("inf")  # when the last successful one started
        self._refreshed_in_background = False  # searches then leave refreshing to that thread
        self._stop_refreshing = threading.Event()
        self._last_save = time.monotonic()
        self._dirty = False
        with _folder_lock(folder, shared=True):
            loaded = VectorIndex.load(folder, self.options)
            owners = SegmentOwners.load(folder)
        wanted = (embedding_key, dim, self.options.kind)
        if loaded and (loaded[1].embedding_key, loaded[1].dim, loaded[1].kind) == wanted and self._lists_fit(loaded[0]):
            self.index, self.state = loaded
            if owners is None:  # a snapshot from before the map was kept: read it from the catalog (whose
                # deleted segments are gone; the next refresh drops them from the index too)
                owners = SegmentOwners(*catalog.segment_owners(embedding_key, self.state.segment_watermark))
            self.owners = owners
            log.info("index snapshot loaded", extra={"segments": len(self.index), "folder": str(folder)})
        else:
            self.index = VectorIndex(dim, self.options)
            self.owners = SegmentOwners()
            self.state = IndexState(embedding_key, dim, self.options.kind, 0, catalog.max_tombstone_id())

    def _lists_fit(self, loaded: VectorIndex) -> bool:
        """Whether a loaded snapshot's IVF lists are stored as ``VIDSEEK_INDEX_LISTS`` asks (a snapshot
        without such lists fits any setting); one that does not is rebuilt from the catalog by the first
        refresh, as a snapshot of another kind is, so a change of that setting takes effect at the next start."""
        stored = loaded.list_storage
        if stored is None or stored == self.options.lists:
            return True
        log.warning("index snapshot ignored: its IVF lists are %s, VIDSEEK_INDEX_LISTS is %s; rebuilding it from "
                    "the catalog", stored, self.options.lists, extra={"folder": str(self.folder)})
        return False

    def __len__(self) -> int:
        return len(self.index)

    def refresh_age(self) -> float | None:
        """Seconds since the index last pulled catalog changes successfully (None: never); a refresh
        that fails (the catalog unreachable) leaves it growing."""
        last = self._last_success
        return None if last == -float("inf") else time.monotonic() - last

    def refresh_in_background(self) -> threading.Thread:
        """Refresh every ``refresh_seconds`` (at least every 0.1 s) on a daemon thread, so that what
        the index holds -- and ``/healthz`` reports -- follows ingestion without waiting for a search.
        Database errors are logged and retried at the next tick."""
        self._refreshed_in_background = True
        return run_periodically(lambda: self.refresh(force=True), self.refresh_seconds, self._stop_refreshing,
                                "index-refresh", "index refresh failed", log)

    def stop_refreshing(self) -> None:
        """End the thread of :meth:`refresh_in_background` (an index no longer searched: the active
        embedding space changed)."""
        self._stop_refreshing.set()

    @property
    def structure(self) -> str:
        """What is searched now: ``flat`` (also an IVF kind not trained yet), ``ivf``, ``ivfpq`` or ``hnsw``."""
        kind = "ivf" if self.options.kind == "auto" else self.options.kind
        return kind if kind not in TRAINED_KINDS or self.index.trained else "flat"

    def refresh(self, force: bool = False) -> SyncReport:
        """Apply catalog changes since the watermarks (at most every ``refresh_seconds`` unless forced).

        A refresh that is not forced skips when another one is running, so searches never queue
        behind one. An ``auto`` index switches here: an empty one over a catalog already past its
        threshold is built as IVF straight away; one that grows past it (or to 4x the vectors its
        lists were trained for) is rebuilt from the catalog as IVF, while other threads keep
        searching the old one.
        """
        if not self._lock.acquire(blocking=force):
            return SyncReport(0, 0, len(self.index))
        try:
            now = time.monotonic()
            if not force and now - self._last_refresh < self.refresh_seconds:
                return SyncReport(0, 0, len(self.index))
            self._last_refresh = now
            report = self._rebuild_locked() if self._starts_large() else self._pull_locked()
            self._last_success = now
            return report
        finally:
            self._lock.release()

    def _pull_locked(self) -> SyncReport:
        """Apply the catalog's tombstones and new segments past the watermarks (rebuilding when outgrown)."""
        tomb_id, deleted = self.catalog.tombstones_after(self.state.tombstone_watermark)
        if deleted:
            self.index.remove(np.asarray(deleted, np.int64))
            self.owners.remove(deleted)
        added = 0
        for batch in self.catalog.iter_embeddings(self.state.embedding_key, self.state.segment_watermark):
            self.index.add(batch.ids, batch.vectors)
            self.owners.add(batch.ids, batch.video_ids)
            self.state.segment_watermark = int(batch.ids[-1])
            added += len(batch.ids)
        self.state.tombstone_watermark = tomb_id
        self.owners.merge()  # here, on the refreshing thread, not in the next query
        self._dirty |= bool(added or deleted)
        if self._outgrown():
            self._rebuild_locked()
            log.info("auto index rebuilt as IVF", extra={"segments": len(self.index), "nlist": self.index.nlist})
        elif self._dirty and time.monotonic() - self._last_save >= self.save_interval:
            self._save_locked()
        return SyncReport(added, len(deleted), len(self.index))

    def _starts_large(self) -> bool:
        """An ``auto`` index that holds nothing yet over a catalog past its threshold (one count query,
        made only while the index has never read a segment)."""
        if self.options.kind != "auto" or self.state.segment_watermark or len(self.index):
            return False
        return self.catalog.count_segments(self.state.embedding_key) >= self.options.train_at

    def _outgrown(self) -> bool:
        """``auto`` only: still flat past the threshold, or IVF with a quarter of the lists it should have."""
        if self.options.kind != "auto":
            return False
        n = len(self.index)
        if not self.index.trained:
            return n >= self.options.train_at
        return not self.options.nlist and self.options.nlist_for(n) >= 2 * self.index.nlist

    def rebuild(self) -> SyncReport:
        """Throw the index away and rebuild it from every catalog segment of this embedding space,
        streaming (IVF kinds first train on a uniform sample of up to ``MAX_TRAINING_SAMPLE``)."""
        with self._lock:
            return self._rebuild_locked()

    def _rebuild_locked(self) -> SyncReport:
        tomb = self.catalog.max_tombstone_id()
        fresh, owners = VectorIndex(self.state.dim, self.options), SegmentOwners()
        count = self.catalog.count_segments(self.state.embedding_key)
        if self.options.kind in TRAINED_KINDS and count >= self.options.train_at:
            fresh.train(self._training_sample(count), size=count)
        watermark = 0
        for batch in self.catalog.iter_embeddings(self.state.embedding_key, 0):
            fresh.add(batch.ids, batch.vectors)
            owners.add(batch.ids, batch.video_ids)
            watermark = int(batch.ids[-1])
        self.state.segment_watermark = watermark
        self.state.tombstone_watermark = tomb
        owners.merge()
        self.index, self.owners = fresh, owners
        self._save_locked()
        return SyncReport(len(fresh), 0, len(fresh))

    def _training_sample(self, count: int) -> np.ndarray:
        """Every ``step``-th catalog vector of this space: about ``IndexOptions.training_size`` of them,
        at most ``MAX_TRAINING_SAMPLE``. Returns float32 ``[n, dim]``."""
        wanted = min(MAX_TRAINING_SAMPLE, self.options.training_size(count))
        step = max(1, count // wanted)
        parts, seen = [], 0
        for batch in self.catalog.iter_embeddings(self.state.embedding_key, 0):
            offset = (-seen) % step
            parts.append(batch.vectors[offset::step])
            seen += len(batch.vectors)
        return np.concatenate(parts)

    def verify(self, repair: bool = False) -> VerifyReport:
        """Compare the index, caught up with the catalog, against the catalog's segments up to
        the watermark; with ``repair``, fix every difference and save a snapshot.

        Ids above the watermark are not compared (the next refresh adds them).
        """
        self.refresh(force=True)
        with self._lock:
            held, counts = np.unique(self.index.ids(), return_counts=True)
            duplicated = held[counts > 1]
            lossy = self.options.kind == "ivfpq"
            catalog_ids, fix_ids, fix_videos, fix_vectors = [], [], [], []
            missing = mismatched = 0
            for batch in self.catalog.iter_embeddings(self.state.embedding_key, 0):
                keep = batch.ids <= self.state.segment_watermark
                ids, videos, vectors = batch.ids[keep], batch.video_ids[keep], batch.vectors[keep]
                catalog_ids.append(ids)
                present = np.isin(ids, held)
                missing += int((~present).sum())
                differs = present & (self.owners.videos_of(ids) != videos)
                if not lossy and present.any():
                    stored = self.index.vectors(ids[present])
                    differs[present] |= np.abs(stored - self.index.stored_form(vectors[present])).max(axis=1) > VECTOR_TOLERANCE
                mismatched += int(differs.sum())
                bad = ~present | differs | np.isin(ids, duplicated)
                fix_ids.append(ids[bad])
                fix_videos.append(videos[bad])
                fix_vectors.append(vectors[bad])
            in_catalog = np.concatenate(catalog_ids) if catalog_ids else np.zeros(0, np.int64)
            extra = np.setdiff1d(np.union1d(held, self.owners.items()[0]), in_catalog)
            report = VerifyReport(len(in_catalog), int(counts.sum()), missing, len(extra), len(duplicated),
                                  mismatched, repaired=False)
            if not repair or report.consistent:
                return report
            readd = np.concatenate(fix_ids)
            self.index.remove(np.concatenate([extra, readd]))
            self.index.add(readd, np.concatenate(fix_vectors))
            self.owners.remove(extra)
            self.owners.add(readd, np.concatenate(fix_videos))
            self._save_locked()
            log.warning("index repaired", extra={"missing": missing, "extra": len(extra),
                                                  "duplicated": len(duplicated), "mismatched": mismatched})
            return replace(report, repaired=True)

    def search(self, query: np.ndarray, n: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Refresh if due (unless :meth:`refresh_in_background` does it: then a request never pays for a
        refresh), then the top-``n`` segments for one query ``[D]``: ``(scores [n'], ids [n'])``,
        among the segment ids ``allowed`` int64 ``[m]`` only when given.

        IVF-PQ compares the query with compressed vectors, so its scores are approximate and its
        order is rough (in ``benchmarks/index_memory.py``, a third of the exact top 10 is in its top
        10, but 99% in its top 200): its candidates are re-scored exactly with their catalog vectors.
        An index that cannot search a subset of ids (HNSW, GPU) scores the allowed segments' catalog
        vectors exactly instead.
        """
        if not self._refreshed_in_background:
            self.refresh()
        if allowed is not None and not self.index.filterable:
            return self._rescored(query, allowed, n)
        scores, ids = self.index.search(query[None, :], n, allowed)
        if self.options.kind != "ivfpq" or not len(ids[0]):
            return scores[0], ids[0]
        return self._rescored(query, ids[0], n)

    def _rescored(self, query: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` of the segments ``ids`` by exact score against their catalog vectors."""
        parts = [self.catalog.embeddings_of(ids[i:i + RESCORE_BATCH]) for i in range(0, len(ids), RESCORE_BATCH)]
        parts = [(found, vectors) for found, vectors in parts if len(found)]
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        found = np.concatenate([f for f, _ in parts])
        exact = np.concatenate([v @ query.astype(np.float32) for _, v in parts])
        order = np.argsort(-exact, kind="stable")[:n]
        return exact[order], found[order]

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def videos_of(self, ids: np.ndarray) -> np.ndarray:
        """The videos of segment ``ids`` int64 ``[n]`` (as :meth:`search` returns them): int64 ``[n]``,
        ``-1`` for a segment the index does not hold."""
        return self.owners.videos_of(ids)

    def _save_locked(self) -> None:
        with _folder_lock(self.folder):
            self.owners.save(self.folder)  # one snapshot: readers load all three files under the shared lock
            self.index.save(self.folder, self.state)
        self._dirty = False
        self._last_save = time.monotonic()


@contextmanager
def _folder_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """``flock`` on ``folder/.lock``: exclusive for writing a snapshot, shared for reading one."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
