"""What ``mode=hybrid`` adds to a search: ``QueryService.search`` in vector and in hybrid mode, in process,
over a synthetic catalog (random unit vectors, titles and tags drawn from a small vocabulary that the
queries share) on SQLite and PostgreSQL, flat index, precomputed query vectors (no text encoder).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/hybrid_bench.py --videos 5000 --segments 10
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import text

from benchmarks.common import distinct_queries, latency_percentiles, machine_line, temporary_database
from search.catalog import Catalog, SegmentRecord
from search.db import upgrade
from search.query import QueryService
from search.segment_index import SegmentIndex
from search.vector_index import IndexOptions

KEY = "bench"
FILLER = tuple(f"word{i}" for i in range(300))  # title words no query holds
TAGS = tuple(f"tag{i}" for i in range(30))


def fill(catalog: Catalog, videos: int, segments: int, dim: int, rng: np.random.Generator) -> None:
    """``videos`` videos of ``segments`` random unit vectors each; titles of 4 words, one in five from the
    queries' words; up to 3 tags each."""
    query_words = sorted({w for q in distinct_queries(100) for w in q.split() if len(w) > 3})
    for i in range(videos):
        words = [str(rng.choice(query_words)) if rng.random() < 0.2 else str(rng.choice(FILLER)) for _ in range(4)]
        video = catalog.get_or_create_video(Path(f"/media/v{i}.mp4"), f"{i:064x}", 1)
        x = rng.standard_normal((segments, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        catalog.replace_segments(video.id, [SegmentRecord(j, j, j + 1.0, 1, None, v) for j, v in enumerate(x)], KEY)
        catalog.set_metadata(video.id, " ".join(words), [str(t) for t in rng.choice(TAGS, rng.integers(0, 4), replace=False)])


def measure(url: str, folder: Path, videos: int, segments: int, dim: int, queries: int) -> dict[str, dict[str, float]]:
    """Latency percentiles (ms) of whole searches per mode, and of hybrid's text stage."""
    upgrade(url)
    catalog = Catalog(url)
    rng = np.random.default_rng(0)
    fill(catalog, videos, segments, dim, rng)
    if catalog.engine.dialect.name == "postgresql":  # statistics, as autovacuum would have gathered by now
        with catalog.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    index = SegmentIndex(catalog, folder, KEY, dim, IndexOptions("flat"), refresh_seconds=3600)  # no pulls while timed
    index.refresh(force=True)
    texts = distinct_queries(queries)
    vectors = {t: v / np.linalg.norm(v) for t, v in zip(texts, rng.standard_normal((queries, dim)).astype(np.float32))}
    service = QueryService(catalog, index, vectors.__getitem__)
    for query in texts[:3]:  # warm the pools and caches
        service.search(query, 10, mode="hybrid")
    timings: dict[str, list[float]] = {"vector": [], "hybrid": [], "hybrid text stage": []}
    for query in texts:
        for mode in ("vector", "hybrid"):
            result = service.search(query, 10, mode=mode)
            timings[mode].append(result.timings_ms["total"] - result.timings_ms["encode"])
            if mode == "hybrid":
                timings["hybrid text stage"].append(result.timings_ms["text"])
    catalog.dispose()
    return {name: latency_percentiles(values) for name, values in timings.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--segments", type=int, default=10, help="per video")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    print(machine_line() + ", 1 thread\n")
    print("| database | search | p50 ms | p95 ms |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, temporary_database("vidseek_hybrid_bench") as pg_url:
        for name, url in (("SQLite", f"sqlite:///{tmp}/catalog.db"), ("PostgreSQL", pg_url)):
            rows = measure(url, Path(tmp) / name, args.videos, args.segments, args.dim, args.queries)
            for label, stats in rows.items():
                print(f"| {name} | {label} | {stats['p50']:.1f} | {stats['p95']:.1f} |")


if __name__ == "__main__":
    main()
