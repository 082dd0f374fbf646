"""FAISS vector index over segment embeddings, keyed by segment id.

Vectors are L2-normalised, so inner product is cosine similarity. Index kinds:

- ``auto`` (the default): exact ``flat`` while the library is small, ``ivf`` once it holds
  ``AUTO_IVF_AT`` segments (where flat search stops being cheap: measured, see below);
  ``search.segment_index`` makes the switch (and retrains as the library grows).
- ``flat``: exact search, ``IndexIDMap2(IndexFlatIP)``; its time grows with the library
  (about 2.1 GB per million 512-d vectors).
- ``ivf``: ``IndexIVFFlat`` with native ids (``lists="fp32"``, the default): the same memory as
  flat, much faster search, exact scores. With ``lists="fp16"`` (``VIDSEEK_INDEX_LISTS``, also for
  ``auto`` once it is IVF) the lists hold each vector in float16 (``IndexIVFScalarQuantizer``
  ``QT_fp16``, not by residual): half the memory (about 1.05 GB per million 512-d vectors) and
  half the bytes a search scans, but a score is the inner product with the float16-rounded
  vector, within about 1e-4 of the exact one (each component rounded to 11 significant bits), so
  candidates that close can trade places: not the default, which keeps the exact order.
- ``ivfpq``: ``IndexIVFPQ`` with ``pq_m`` bytes per vector (8-bit codes): for 10M+ segments,
  ~0.1 GB per million at ``pq_m=64``; scores are approximate.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot delete, so removed ids are filtered
  out of results until the next save (which stores only live vectors).

The IVF kinds need training. Until ``train_at`` vectors have been added they are held in an
exact flat index (so a small library is searched exactly and the coarse quantizer is never
trained on a handful of vectors); then the index trains on them and moves them over.
``vidseek index rebuild`` retrains on a sample of the whole catalog (:meth:`VectorIndex.train`).

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
KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
LIST_STORAGE = ("fp16", "fp32")  # how ``ivf`` (and ``auto`` once IVF) lists hold vectors
TRAINED_KINDS = ("auto", "ivf", "ivfpq")
MIN_TRAIN = 10_000  # fewest vectors an IVF index trains on (8-bit PQ needs 39 x 256 of them)
MAX_NPROBE = 128
# ``auto``: segments from which the index is IVF rather than exact flat, and lists probed per query.
# Measured with ``benchmarks/index_memory.py --vectors 20000 50000 100000 --kinds flat auto-ivf``
# (docs/performance.md): 100k is the smallest library at which this IVF keeps recall@10 >= 0.98
# against exact search (0.69 at 20k, 0.96 at 50k, 0.983 at 100k), while flat search there already
# costs ~170x the IVF search (median 333 vs 2.0 ms on a loaded 2-core EPYC; ~16 ms flat when quiet).
AUTO_IVF_AT = 100_000
AUTO_NPROBE = 32
AUTO_KMEANS_ITERATIONS = 10  # auto trains in a serving process: 10 k-means rounds, not faiss's 25


@dataclass
class IndexState:
    """What the saved index holds: which embedding space, and how far into the catalog it has read."""

    embedding_key: str
    dim: int
    kind: str
    segment_watermark: int = 0  # highest segment id read from the catalog
    tombstone_watermark: int = 0  # highest tombstone id applied


@dataclass(frozen=True)
class IndexOptions:
    """How to build the FAISS index (``VIDSEEK_INDEX_*`` settings).

    ``nlist`` 0 picks about ``4·sqrt(n)`` lists for the ``n`` training vectors; ``nprobe`` 0
    probes ``nlist / 8`` of them (at most ``MAX_NPROBE``; ``auto``: ``AUTO_NPROBE``); ``pq_m`` is
    the IVF-PQ code size in bytes; ``auto_at`` 0 means ``AUTO_IVF_AT``; ``search_threads``: the
    OpenMP threads one search uses (an IVF search of one query splits its probed lists among them);
    ``lists``: how ``ivf``/``auto`` lists hold vectors (:data:`LIST_STORAGE`, see the module docstring).
    """

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 64
    hnsw_m: int = 32
    auto_at: int = 0
    search_threads: int = 1
    lists: str = "fp32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}")
        if self.lists not in LIST_STORAGE:
            raise ValueError(f"IVF lists are stored as one of {LIST_STORAGE}, not {self.lists!r}")
        if self.search_threads < 1:
            raise ValueError(f"search_threads must be >= 1, got {self.search_threads}")

    def nlist_for(self, n: int) -> int:
        """Inverted lists for ``n`` training vectors: the configured count, else ~4·sqrt(n)
        (``auto``: ~2·sqrt(n), a quarter of the k-means work when it trains in a serving process),
        with at least 39 training points per list."""
        wanted = self.nlist or int((2 if self.kind == "auto" else 4) * math.sqrt(max(n, 1)))
        return max(1, min(wanted, n // 39))

    def nprobe_for(self, nlist: int) -> int:
        if self.nprobe:
            return self.nprobe
        return min(nlist, AUTO_NPROBE) if self.kind == "auto" else max(1, min(nlist // 8, MAX_NPROBE))

    def training_size(self, count: int) -> int:
        """Vectors to train on for a library of ``count``: 64 per list (``auto``: 40, just over the
        39 faiss asks for, to keep a switch in a serving process short), at least ``train_at``
        (not for ``auto``), at most ``count``."""
        if self.kind == "auto":
            return min(count, 40 * self.nlist_for(count))
        return min(count, max(self.train_at, 64 * self.nlist_for(count)))

    @property
    def train_at(self) -> int:
        """Vectors collected (searched exactly) before an IVF index trains."""
        if self.kind == "auto":
            return max(self.auto_at or AUTO_IVF_AT, 39 * self.nlist)
        return max(MIN_TRAIN, 39 * self.nlist)


def _faiss_classes(*names: str) -> tuple[type, ...]:
    """The FAISS index classes of these names that this build has (the GPU ones only in GPU builds)."""
    return tuple(getattr(faiss, name) for name in names if hasattr(faiss, name))


_FP16_LISTS = _faiss_classes("IndexIVFScalarQuantizer", "GpuIndexIVFScalarQuantizer")
_FP32_LISTS = _faiss_classes("IndexIVFFlat", "GpuIndexIVFFlat")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """Thread-safe inner-product index of ``dim``-dimensional vectors with int64 ids."""

    def __init__(self, dim: int, kind: str | IndexOptions = "flat", use_gpu: bool | None = None):
        self.options = kind if isinstance(kind, IndexOptions) else IndexOptions(kind)
        self.dim, self.kind = dim, self.options.kind
        if self.kind == "ivfpq" and dim % self.options.pq_m:
            raise ValueError(f"VIDSEEK_INDEX_PQ_M={self.options.pq_m} must divide the embedding size {dim}")
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._lock = threading.RLock()
        self._deleted: set[int] = set()  # HNSW only
        self._max_id = -1  # ids above this cannot be present, so adding them needs no removal
        self._trained = self.kind not in TRAINED_KINDS
        self._index: faiss.Index = self._to_gpu(self._new_index())

    # ----- construction -------------------------------------------------------------------
    def _new_index(self, train: np.ndarray | None = None, size: int = 0) -> faiss.Index:
        """A CPU index of this kind; IVF kinds are trained on ``train`` ``[n, dim]`` with lists for
        ``size`` vectors (at least n; at most n / 39 lists), or are an exact flat index (the
        untrained stage) when ``train`` is None."""
        o = self.options
        if self.kind == "hnsw":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, o.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        if self.kind == "flat" or train is None:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        nlist = min(o.nlist_for(max(size, len(train))), max(1, len(train) // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.kind in ("ivf", "auto") and o.lists == "fp16":
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT, False)  # not by residual: each vector as is
        elif self.kind in ("ivf", "auto"):
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, o.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        if self.kind == "auto":
            index.cp.niter = AUTO_KMEANS_ITERATIONS
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        index.nprobe = o.nprobe_for(nlist)
        return index

    def _to_gpu(self, index: faiss.Index) -> faiss.Index:
        if not self.use_gpu or self.kind == "hnsw":
            return index
        self._gpu_resources = getattr(self, "_gpu_resources", None) or faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    def _cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self._index) if self.use_gpu and self.kind != "hnsw" else self._index

    @property
    def trained(self) -> bool:
        """False while an IVF kind still holds its vectors in the exact untrained stage."""
        return self._trained

    @property
    def list_storage(self) -> str | None:
        """How this index's IVF lists hold vectors (one of :data:`LIST_STORAGE`), None when it has no
        such lists (flat, HNSW, IVF-PQ, an ``auto`` index still flat): read off the FAISS index, so a
        loaded snapshot says what it was built with."""
        with self._lock:
            if isinstance(self._index, _FP16_LISTS):
                return "fp16"
            return "fp32" if isinstance(self._index, _FP32_LISTS) else None

    @property
    def nlist(self) -> int:
        """Inverted lists of a trained IVF index (0 when it is not one)."""
        with self._lock:
            cpu = self._cpu_index()
            return int(cpu.nlist) if isinstance(cpu, faiss.IndexIVF) else 0

    def train(self, sample: np.ndarray, size: int = 0) -> None:
        """Train an IVF index on ``sample`` float32 ``[n, dim]`` (n >= 39) with lists for ``size``
        vectors (default: n, or the vectors held if more), moving any vectors already held into it.
        A no-op for kinds that need no training."""
        if self.kind not in TRAINED_KINDS:
            return
        with self._lock:
            ids, vectors = self._export_locked()
            fresh = self._new_index(train=sample, size=max(size, len(ids)))
            if len(ids):
                fresh.add_with_ids(vectors, ids)
            self._index = self._to_gpu(fresh)
            self._trained = True

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
            replaced = ids[ids <= self._max_id]
            self._remove_locked(replaced)
            if not self._deleted.isdisjoint(replaced.tolist()):  # HNSW only marks removals: drop
                self._compact_locked()  # the old vectors for real, or they would come back
            self._index.add_with_ids(vectors, ids)
            self._max_id = max(self._max_id, int(ids.max()))
            if self.kind != "auto" and not self.trained and self._index.ntotal >= self.options.train_at:
                self.train(self._export_locked()[1])

    def remove(self, ids: np.ndarray | list[int]) -> None:
        with self._lock:
            self._remove_locked(np.asarray(ids, dtype=np.int64))

    def _remove_locked(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or self._index.ntotal == 0:
            return
        if self.kind == "hnsw":
            self._deleted.update(ids.tolist())
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    # ----- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal) - len(self._deleted)

    @property
    def filterable(self) -> bool:
        """Whether :meth:`search` can restrict itself to ``allowed`` ids: CPU flat and IVF kinds.
        HNSW (a filtered graph walk can come back short) and GPU indexes cannot."""
        return self.kind != "hnsw" and not self.use_gpu

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for ``queries`` float32 ``[Q, dim]``, among the ids in
        ``allowed`` int64 ``[m]`` only when given (needs :attr:`filterable`; IVF then probes every
        list, so the top ``k`` allowed vectors are found however few there are).

        Returns ``(scores [Q, k'], ids [Q, k'])`` with ``k' <= min(k, len(self))``, best first.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allowed is not None and not self.filterable:
            raise ValueError(f"a {self.kind} index{' on the GPU' if self.use_gpu else ''} cannot search a subset of ids")
        with self._lock:
            n = len(self) if allowed is None else min(len(self), len(allowed))
            if n == 0 or k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            k = min(k, n)
            fetch = min(k + len(self._deleted), int(self._index.ntotal))
            if allowed is None:
                params = None
            else:
                selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
                params = self._subset_params(selector)
            scores, ids = self._search_locked(queries, fetch, params)
            deleted = list(self._deleted)
        keep = ids >= 0  # IVF may find fewer than asked for when few lists are probed
        if deleted:
            keep &= ~np.isin(ids, deleted)
        if not keep.all():
            width = int(keep.sum(axis=1).min(initial=k))
            scores = np.stack([row[m][:width] for row, m in zip(scores, keep)])
            ids = np.stack([row[m][:width] for row, m in zip(ids, keep)])
        return scores[:, :k], ids[:, :k]

    def _search_locked(self, queries: np.ndarray, k: int,
                       params: faiss.SearchParameters | None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search of ``queries`` ``[Q, dim]``. FAISS runs an IVF search in parallel over its
        queries (``parallel_mode`` 0), which leaves one query -- what a request searches -- on one
        thread; for one query ``parallel_mode`` 1 splits its probed lists among ``search_threads``
        OpenMP threads instead (the same candidates: each list is scanned by the same kernel, the
        per-thread top-k heaps merged). OpenMP's thread count is per calling thread: it is set for
        that search in the caller's thread and put back after, so other searches keep FAISS's own."""
        index, threads = self._index, self.options.search_threads
        split = isinstance(index, faiss.IndexIVF) and len(queries) == 1 and threads > 1
        if isinstance(index, faiss.IndexIVF):
            index.parallel_mode = 1 if split else 0
        if not split:
            return index.search(queries, k, params=params)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            return index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(before)

    def _subset_params(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        """Search parameters keeping to ``selector``'s ids; an IVF index probes all its lists."""
        if isinstance(self._index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self._index.nlist))
        return faiss.SearchParameters(sel=selector)

    def ids(self) -> np.ndarray:
        """Every id held (sorted int64 ``[n]``); an id stored twice appears twice."""
        with self._lock:
            return np.sort(self._export_locked(vectors=False)[0])

    def stored_form(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` float32 ``[n, dim]`` as this index holds them (what :meth:`vectors` gives back):
        rounded to float16 when its lists are float16 (not by residual: a vector's code is its own),
        else unchanged (IVF-PQ: not comparable)."""
        with self._lock:
            if self.list_storage != "fp16":  # read off the index itself: no GPU -> CPU copy to find out
                return vectors
            quantizer = self._cpu_index().sq  # FAISS's own float16 rounding (numpy's differs by an ulp at times)
            return quantizer.decode(quantizer.compute_codes(np.ascontiguousarray(vectors, dtype=np.float32)))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (present ones), float32 ``[n, dim]``; IVF-PQ decodes its
        codes, so they approximate the vectors that were added; float16 lists give them rounded."""
        with self._lock:
            cpu = self._cpu_index()
            wanted = np.asarray(ids, dtype=np.int64)
            if not len(wanted):
                return np.zeros((0, self.dim), np.float32)
            if isinstance(cpu, faiss.IndexIDMap2):
                return np.stack([cpu.reconstruct(int(i)) for i in wanted])
            return _reconstruct_ivf(cpu, wanted)

    # ----- persistence --------------------------------------------------------------------
    def save(self, folder: Path, state: IndexState) -> None:
        """Write the index and its state atomically (temp files, then rename) into ``folder``.

        Readers must hold the folder lock (``search.segment_index``) while loading, so that they
        never pair a new index file with an old state file.
        """
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._deleted:  # HNSW: store only live vectors
                self._compact_locked()
            tmp_index = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
            faiss.write_index(self._cpu_index(), str(tmp_index))
            tmp_state = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
            tmp_state.write_text(json.dumps(asdict(state)))
            tmp_index.replace(folder / INDEX_FILE)
            tmp_state.replace(folder / STATE_FILE)

    def _compact_locked(self) -> None:
        ids, vectors = self._export_locked()
        self._deleted.clear()
        self._index = self._to_gpu(self._new_index())
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def _export_locked(self, vectors: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Live ``(ids [n], vectors [n, dim])`` (vectors empty when not asked for)."""
        cpu = self._cpu_index()
        if isinstance(cpu, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
            out = cpu.index.reconstruct_n(0, cpu.ntotal) if vectors and cpu.ntotal else None
        else:
            invlists = cpu.invlists
            parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                     for i in range(cpu.nlist) if invlists.list_size(i)]
            ids = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            out = _reconstruct_ivf(cpu, ids) if vectors and len(ids) else None
        out = out if out is not None else np.zeros((0, self.dim), np.float32)
        if not self._deleted:
            return ids, out
        keep = ~np.isin(ids, list(self._deleted))
        return ids[keep], out[keep] if len(out) else out

    @classmethod
    def load(cls, folder: Path, options: IndexOptions | None = None,
             use_gpu: bool | None = None) -> tuple["VectorIndex", IndexState] | None:
        """The index saved in ``folder`` with its state, or None when there is none (or it is
        unreadable). ``options`` (same kind) supply query-time settings such as ``nprobe``."""
        state_path, index_path = folder / STATE_FILE, folder / INDEX_FILE
        if not state_path.is_file() or not index_path.is_file():
            return None
        try:
            state = IndexState(**json.loads(state_path.read_text()))
            same_kind = options is not None and options.kind == state.kind
            threads = options.search_threads if options is not None else 1
            index = cls(state.dim, options if same_kind else IndexOptions(state.kind, search_threads=threads),
                        use_gpu=use_gpu)
            stored = faiss.read_index(str(index_path))
            if isinstance(stored, faiss.IndexIVF) and index.options.nprobe:
                stored.nprobe = index.options.nprobe
            index._trained = index.kind not in TRAINED_KINDS or not isinstance(stored, faiss.IndexIDMap2)
            index._index = index._to_gpu(stored)
            index._max_id = state.segment_watermark
        except (ValueError, TypeError, RuntimeError):
            return None
        return index, state


def _reconstruct_ivf(index: faiss.IndexIVF, ids: np.ndarray) -> np.ndarray:
    """Vectors of ``ids`` from an IVF index, through a temporary id -> list map (a permanent one
    would cost memory on every vector and its array form would forbid removals)."""
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    try:
        return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
    finally:
        index.set_direct_map_type(faiss.DirectMap.NoMap)
