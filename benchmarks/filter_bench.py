"""Cost of a filtered FAISS search (``VectorIndex.search`` with ``allowed`` ids) against an
unfiltered one, on random unit vectors, one thread, flat and IVF (a filtered IVF search probes every list).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/filter_bench.py --segments 200000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import faiss
import numpy as np

from search.vector_index import IndexOptions, VectorIndex

FRACTIONS = (None, 0.01, 0.5)  # share of the segments a filter allows (None: no filter)


def measure(segments: int, dim: int, queries: int, nlist: int, candidates: int = 200) -> list[tuple[str, str, float]]:
    """``(kind, filter, ms per query)`` for each index kind and allowed fraction."""
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
            t0 = time.perf_counter()
            for row in x[:queries]:
                index.search(row[None], candidates, allowed)
            ms = (time.perf_counter() - t0) / queries * 1e3
            rows.append((kind, "none" if fraction is None else f"{fraction:.0%} of segments", ms))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--nlist", type=int, default=1024)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    print("| index | filter | ms per query (200 candidates) |\n|---|---|---|")
    for kind, label, ms in measure(args.segments, args.dim, args.queries, args.nlist):
        print(f"| {kind} | {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
