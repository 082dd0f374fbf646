"""Memory per million segments of each FAISS index kind vidseek offers (not a test).

    PYTHONPATH=. python benchmarks/index_memory.py --vectors 1000000 --kinds flat ivf ivfpq64 ivfpq32
    PYTHONPATH=. python benchmarks/index_memory.py --vectors 200000 --kinds hnsw
    PYTHONPATH=. python benchmarks/index_memory.py --vectors 20000 50000 100000 200000 1000000 --kinds flat auto-ivf
    PYTHONPATH=. python benchmarks/index_memory.py --vectors 1000000 --kinds auto-ivf auto-ivf-fp16

Each kind is built in a fresh child process through ``search.vector_index.VectorIndex`` (the code
the API runs), from 512-d unit vectors drawn around 4096 random centres (real CLIP embeddings
cluster; uniform random vectors would make every approximate index look bad). Reported: resident
memory added by the index (RSS after adding minus RSS before, per million vectors), the size of
its snapshot file, build time, the mean latency of single-query searches for the API's 200
candidates (and their median with ``VIDSEEK_SEARCH_THREADS`` 1 and 2, side by side: an IVF search
of one query split among two threads), recall@10 against exact search on queries near stored vectors, and how many of the
exact top 10 are among the 200 candidates (what a re-scoring stage after the index would see).
``auto`` is the default ``VIDSEEK_INDEX_TYPE`` (flat below its threshold), ``auto-ivf`` the IVF it
becomes above it, measured at any size: flat against ``auto-ivf`` over several ``--vectors`` is how
the threshold was chosen (docs/performance.md); ``auto-ivf-fp16`` is the same IVF with float16
lists (``VIDSEEK_INDEX_LISTS=fp16``). IVF kinds train on a sample as the rebuild draws it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_description  # noqa: E402
from search.segment_index import MAX_TRAINING_SAMPLE  # noqa: E402
from search.vector_index import TRAINED_KINDS, IndexOptions, IndexState, VectorIndex  # noqa: E402

DIM = 512
CENTRES = 4096
CHUNK = 50_000
SEARCH_THREADS = (1, 2)  # VIDSEEK_SEARCH_THREADS settings timed side by side on the same single queries
KINDS = {
    "flat": IndexOptions("flat"),
    "ivf": IndexOptions("ivf", nlist=1024, nprobe=32),
    "ivfpq64": IndexOptions("ivfpq", nlist=1024, nprobe=32, pq_m=64),
    "ivfpq32": IndexOptions("ivfpq", nlist=1024, nprobe=32, pq_m=32),
    "hnsw": IndexOptions("hnsw"),
    "auto": IndexOptions("auto"),
    "auto-ivf": IndexOptions("auto", auto_at=1),
    "auto-ivf-fp16": IndexOptions("auto", auto_at=1, lists="fp16"),  # VIDSEEK_INDEX_LISTS=fp16
}


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def centres(seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((CENTRES, DIM)))


def chunk(i: int, n: int, c: np.ndarray) -> np.ndarray:
    """Chunk ``i`` (``n`` vectors) of the data set: a random centre plus noise, normalised."""
    rng = np.random.default_rng(1000 + i)
    return unit(c[rng.integers(0, CENTRES, n)] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM))


def measure(kind: str, total: int, queries: int = 100) -> dict:
    c = centres()
    sizes = [min(CHUNK, total - s) for s in range(0, total, CHUNK)]
    options = KINDS[kind]
    index = VectorIndex(DIM, options, use_gpu=False)
    t0 = time.perf_counter()
    if options.kind in TRAINED_KINDS and total >= options.train_at:  # the rebuild's sample size
        index.train(chunk(0, min(MAX_TRAINING_SAMPLE, options.training_size(total)), c), size=total)
    trained = time.perf_counter() - t0
    before = rss()
    for i, n in enumerate(sizes):
        index.add(np.arange(i * CHUNK, i * CHUNK + n), chunk(i, n, c))
    added = rss() - before
    build = time.perf_counter() - t0
    rng = np.random.default_rng(7)
    picks = rng.integers(0, total, queries)
    stored = np.zeros((queries, DIM), np.float32)
    for i in np.unique(picks // CHUNK):
        rows = picks // CHUNK == i
        stored[rows] = chunk(i, sizes[i], c)[picks[rows] % CHUNK]
    q = unit(stored + 0.3 * rng.standard_normal(stored.shape).astype(np.float32) / np.sqrt(DIM))
    exact = np.full((queries, 10), -1)
    best = np.full((queries, 10), -np.inf, np.float32)
    for i, n in enumerate(sizes):  # brute-force ground truth, chunk by chunk
        scores = q @ chunk(i, n, c).T
        merged = np.concatenate([best, scores], axis=1)
        ids = np.concatenate([exact, np.arange(i * CHUNK, i * CHUNK + n)[None].repeat(queries, 0)], axis=1)
        top = np.argsort(-merged, axis=1)[:, :10]
        best, exact = np.take_along_axis(merged, top, 1), np.take_along_axis(ids, top, 1)
    found, latencies = [], []
    for i in range(queries):
        t1 = time.perf_counter()
        found.append(index.search(q[i : i + 1], 200)[1][0])
        latencies.append(time.perf_counter() - t1)
    by_threads = {threads: [] for threads in SEARCH_THREADS}
    for i in range(queries):  # the same single queries again, one setting after the other per query
        for threads, spent in by_threads.items():
            index.options = replace(options, search_threads=threads)
            t1 = time.perf_counter()
            index.search(q[i : i + 1], 200)
            spent.append(time.perf_counter() - t1)
    index.options = options
    recall = np.mean([len(set(f[:10]) & set(e)) / 10 for f, e in zip(found, exact)])
    candidate_recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp), IndexState("bench", DIM, KINDS[kind].kind))
        file_bytes = (Path(tmp) / "segments.faiss").stat().st_size
    per_million = 1e6 / total
    return {
        "kind": kind, "options": options.__dict__, "vectors": total, "nlist": index.nlist,
        "rss_mb_per_million": round(added * per_million / 2**20, 1),
        "file_mb_per_million": round(file_bytes * per_million / 2**20, 1),
        "train_s": round(trained, 1), "build_s": round(build, 1),
        "search_ms": round(float(np.mean(latencies)) * 1e3, 2),
        "search_ms_p50": round(float(np.median(latencies)) * 1e3, 2),
        "search_ms_p50_by_search_threads": {t: round(float(np.median(v)) * 1e3, 2) for t, v in by_threads.items()},
        "recall_at_10": round(float(recall), 3),
        "top10_in_200_candidates": round(float(candidate_recall), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq64", "ivfpq32"], choices=sorted(KINDS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="append the results to this JSON-lines file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.vectors[0]) | {"machine": machine_description()}))
        return
    for vectors in args.vectors:
        for kind in args.kinds:  # one process per kind: RSS is not shared between measurements
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--vectors", str(vectors)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(out, flush=True)
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(out + "\n")


if __name__ == "__main__":
    main()
