"""FAISS vector index over segment embeddings, keyed by segment id.

Vectors are L2-normalised, so inner product is cosine similarity. Index kinds:

- ``flat``: exact search, ``IndexIDMap2(IndexFlatIP)`` — the default, right up to ~1M segments.
- ``ivf``: ``IndexIVFFlat`` with native ids; trained on the vectors present when it is first
  filled (``vidseek index rebuild`` retrains on everything).
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot delete, so removed ids are filtered
  out of results until the next rebuild.

When ``faiss`` was built with CUDA and a GPU is present, flat and IVF indexes are searched on
the GPU automatically; they are always saved in CPU form.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

INDEX_FILE = "segments.faiss"
STATE_FILE = "segments.json"


@dataclass
class IndexState:
    """What the saved index holds: which embedding space, and how far into the catalog it has read."""

    embedding_key: str
    dim: int
    kind: str
    segment_watermark: int = 0  # highest segment id read from the catalog
    tombstone_watermark: int = 0  # highest tombstone id applied


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~4·sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


class VectorIndex:
    """Thread-safe inner-product index of ``dim``-dimensional vectors with int64 ids."""

    def __init__(self, dim: int, kind: str = "flat", hnsw_m: int = 32, use_gpu: bool | None = None):
        if kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}")
        self.dim, self.kind, self.hnsw_m = dim, kind, hnsw_m
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._lock = threading.RLock()
        self._deleted: set[int] = set()  # HNSW only
        self._max_id = -1  # ids above this cannot be present, so adding them needs no removal
        self._index: faiss.Index | None = None if kind == "ivf" else self._new_index()

    # ----- construction -------------------------------------------------------------------
    def _new_index(self, train: np.ndarray | None = None) -> faiss.Index:
        if self.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        elif self.kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        else:
            assert train is not None
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, _ivf_nlist(len(train)), faiss.METRIC_INNER_PRODUCT)
            index.train(train)
            index.nprobe = max(1, index.nlist // 8)
            index.quantizer_trains_alone = 0
        return self._to_gpu(index)

    def _to_gpu(self, index: faiss.Index) -> faiss.Index:
        if not self.use_gpu or self.kind == "hnsw":
            return index
        self._gpu_resources = getattr(self, "_gpu_resources", None) or faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    def _cpu_index(self) -> faiss.Index:
        assert self._index is not None
        return faiss.index_gpu_to_cpu(self._index) if self.use_gpu and self.kind != "hnsw" else self._index

    # ----- updates ------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` float32 ``[n, dim]`` under ``ids`` int64 ``[n]`` (replacing any with the same id)."""
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors [{len(ids)}, {self.dim}], got {vectors.shape}")
        with self._lock:
            if self._index is None:  # IVF: train on the first vectors it sees
                self._index = self._new_index(train=vectors)
            self._remove_locked(ids[ids <= self._max_id])
            self._deleted.difference_update(ids.tolist())
            self._index.add_with_ids(vectors, ids)
            self._max_id = max(self._max_id, int(ids.max()))

    def remove(self, ids: np.ndarray | list[int]) -> None:
        with self._lock:
            self._remove_locked(np.asarray(ids, dtype=np.int64))

    def _remove_locked(self, ids: np.ndarray) -> None:
        if self._index is None or len(ids) == 0 or self._index.ntotal == 0:
            return
        if self.kind == "hnsw":
            self._deleted.update(ids.tolist())
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    # ----- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            total = 0 if self._index is None else int(self._index.ntotal)
            return total - len(self._deleted)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for ``queries`` float32 ``[Q, dim]``.

        Returns ``(scores [Q, k'], ids [Q, k'])`` with ``k' = min(k, len(self))``, best first.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            n = len(self)
            if n == 0 or k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            k = min(k, n)
            fetch = min(k + len(self._deleted), int(self._index.ntotal))
            scores, ids = self._index.search(queries, fetch)
        if self._deleted:
            keep = ~np.isin(ids, list(self._deleted)) & (ids >= 0)
            scores = np.stack([row[m][:k] for row, m in zip(scores, keep)])
            ids = np.stack([row[m][:k] for row, m in zip(ids, keep)])
        return scores[:, :k], ids[:, :k]

    # ----- persistence --------------------------------------------------------------------
    def save(self, folder: Path, state: IndexState) -> None:
        """Write the index and its state atomically (temp files, then rename) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._deleted:  # HNSW: store only live vectors
                self._compact_locked()
            tmp_index = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
            if self._index is not None:
                faiss.write_index(self._cpu_index(), str(tmp_index))
            tmp_state = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
            tmp_state.write_text(json.dumps(asdict(state)))
            if self._index is not None:
                tmp_index.replace(folder / INDEX_FILE)
            tmp_state.replace(folder / STATE_FILE)

    def _compact_locked(self) -> None:
        ids, vectors = self._export_locked()
        self._deleted.clear()
        self._index = self._new_index(train=vectors if self.kind == "ivf" else None) if len(ids) or self.kind != "ivf" else None
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def _export_locked(self) -> tuple[np.ndarray, np.ndarray]:
        cpu = self._cpu_index()
        if isinstance(cpu, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
            vectors = cpu.index.reconstruct_n(0, cpu.ntotal) if cpu.ntotal else np.zeros((0, self.dim), np.float32)
        else:
            cpu.make_direct_map()
            invlists = cpu.invlists
            ids = np.concatenate(
                [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy() for i in range(cpu.nlist)]
            ) if cpu.ntotal else np.zeros(0, np.int64)
            vectors = np.stack([cpu.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
        keep = ~np.isin(ids, list(self._deleted))
        return ids[keep], vectors[keep]

    @classmethod
    def load(cls, folder: Path, use_gpu: bool | None = None) -> tuple["VectorIndex", IndexState] | None:
        """The index saved in ``folder`` with its state, or None when there is none (or it is unreadable)."""
        state_path, index_path = folder / STATE_FILE, folder / INDEX_FILE
        if not state_path.is_file():
            return None
        try:
            state = IndexState(**json.loads(state_path.read_text()))
            index = cls(state.dim, state.kind, use_gpu=use_gpu)
            if index_path.is_file():
                index._index = index._to_gpu(faiss.read_index(str(index_path)))
                index._max_id = state.segment_watermark
        except (ValueError, TypeError, RuntimeError):
            return None
        return index, state
