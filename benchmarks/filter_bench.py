"""Cost of a filtered FAISS search (``VectorIndex.search`` with ``allowed`` ids: an ``IDSelector``)
against an unfiltered one and against a bounded widening loop over unfiltered searches (the
alternative issue 13 asks to compare), on random unit vectors, one thread, flat and IVF (a filtered
IVF search probes every list), with the widening loop's recall of the selector's exact top 10.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/filter_bench.py --segments 200000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import faiss
import numpy as np

from benchmarks.common import machine_line
from search.query import MAX_WIDENINGS, WIDENING_FACTOR
from search.vector_index import IndexOptions, VectorIndex

FRACTIONS = (None, 0.01, 0.5)  # share of the segments a filter allows (None: no filter)
K = 10  # videos' worth of hits a search must fill


def widened(index: VectorIndex, query: np.ndarray, allowed: np.ndarray, candidates: int) -> np.ndarray:
    """The alternative to a selector: unfiltered searches for ``candidates`` x 4^i ids (at most
    ``MAX_WIDENINGS`` times more, as the query service widens), keeping the allowed ones, until
    ``K`` are found. Returns the allowed ids found, best first (fewer than ``K`` when it gives up)."""
    n = candidates
    for widening in range(MAX_WIDENINGS + 1):
        _, ids = index.search(query, n, None)
        hits = ids[0][np.isin(ids[0], allowed)]
        if len(hits) >= K or widening == MAX_WIDENINGS:
            return hits[:K]
        n *= WIDENING_FACTOR
    raise AssertionError("unreachable")


def measure(segments: int, dim: int, queries: int, nlist: int, candidates: int = 200) -> list[tuple[str, str, str, float, float]]:
    """``(kind, filter, method, ms per query, recall@K)`` for each index kind and allowed fraction:
    the selector (exact: the reference) and, for filters, the bounded widening loop."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((segments, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(1, segments + 1, dtype=np.int64)
    rows = []
    for kind in ("flat", "ivf"):
        index = VectorIndex(dim, IndexOptions(kind, nlist=nlist) if kind == "ivf" else IndexOptions(kind), use_gpu=False)
        if kind == "ivf":
            index.train(x[: max(39 * nlist, min(segments, 64 * nlist))])
        index.add(ids, x)
        for fraction in FRACTIONS:
            allowed = None if fraction is None else ids[:: round(1 / fraction)]
            label = "none" if fraction is None else f"{fraction:.0%} of segments"
            exact = []
            t0 = time.perf_counter()
            for row in x[:queries]:
                exact.append(index.search(row[None], candidates, allowed)[1][0][:K])
            rows.append((kind, label, "selector", (time.perf_counter() - t0) / queries * 1e3, 1.0))
            if allowed is None:
                continue
            t0 = time.perf_counter()
            found = [widened(index, row[None], allowed, candidates) for row in x[:queries]]
            ms = (time.perf_counter() - t0) / queries * 1e3
            recall = float(np.mean([len(np.intersect1d(f, e)) / K for f, e in zip(found, exact)]))
            rows.append((kind, label, f"widening (x{WIDENING_FACTOR}, at most {MAX_WIDENINGS})", ms, recall))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--nlist", type=int, default=1024)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    print(machine_line() + ", 1 thread\n")
    print(f"| index | filter | method | ms per query (200 candidates) | recall@{K} vs the selector |\n|---|---|---|---|---|")
    for kind, label, method, ms, recall in measure(args.segments, args.dim, args.queries, args.nlist):
        print(f"| {kind} | {label} | {method} | {ms:.1f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
