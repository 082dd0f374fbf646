"""What one search costs in-process, stage by stage, for each text runtime (not a test).

A catalog of ``--segments`` synthetic segments (a fresh PostgreSQL database unless
``--database-url`` is given), its index built once (``VIDSEEK_INDEX_TYPE=auto``), then one
``QueryService`` per ``--text-runtime`` over the same catalog and index, the queries sent
round-robin to each (distinct texts: no cache hits; the text batcher off: one client). Per query:
the text encoder, the FAISS search, the catalog read of the moments returned with their videos'
names (hits are grouped by video with the index's segment -> video map first), and the whole
``search`` call. Beside them, the baseline the map replaced, timed on the same queries: the same
read for *every* FAISS candidate (what the query path read before it grouped hits itself, then
reading the names apart). No HTTP: ``load_bench.py`` measures the served API; this says where a
request's time goes inside it.

    PYTHONPATH=. python benchmarks/query_profile.py --segments 200000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from benchmarks.common import Column, latency_percentiles, machine_description, markdown_table, temporary_database
from benchmarks.load_bench import WORDS, fill_catalog
from indexer.service import load_model, open_index, settings_space_key, text_encoder
from models.factory import model_embed_dim
from models.registry import TEXT_RUNTIMES
from models.text_onnx import ONNX, ONNX_INT8, TORCH, attach_text_runtime
from search.catalog import Catalog
from search.db import upgrade
from search.query import QueryService
from search.settings import Settings

STAGES = ("encode", "faiss", "catalog_reads", "total", "every_candidate_read")


def timed(fn: Callable, into: list[float]) -> Callable:
    """``fn`` appending each call's milliseconds to ``into``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append((time.perf_counter() - start) * 1e3)

    return call


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--segments", type=int, default=200_000)
    parser.add_argument("--per-video", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--text-runtime", nargs="+", default=[TORCH, ONNX, ONNX_INT8], choices=TEXT_RUNTIMES)
    parser.add_argument("--database-url", help="an empty catalog database to fill (default: a fresh PostgreSQL one)")
    parser.add_argument("--threads", type=int, default=1, help="torch/FAISS threads, 1 as in an API process")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    database = nullcontext(args.database_url) if args.database_url else temporary_database("vidseek_profile")
    with database as url, tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp), database_url=url, model=args.model, pretrained=args.pretrained,
                        model_config_dir=args.model_config_dir, device="cpu", text_batch_max=1,
                        index_refresh_seconds=3600.0)  # built once below; no request pays for a refresh
        upgrade(url)
        catalog = Catalog(url)
        key, dim = settings_space_key(base), model_embed_dim(base.model, base.model_config_dir)
        fill_catalog(catalog, key, dim, args.segments, args.per_video)
        index = open_index(base, catalog, key, dim)
        index.refresh(force=True)
        times = {runtime: {stage: [] for stage in STAGES} for runtime in args.text_runtime}
        services = {}
        for runtime in args.text_runtime:
            settings = base.with_overrides(text_runtime=runtime)
            backbone = load_model(settings)
            attach_text_runtime(backbone, runtime, Path(tmp) / "text-towers")
            stage = times[runtime]
            encode = timed(text_encoder(settings, backbone), stage["encode"])
            reads = Catalog(url)  # its own catalog object, so that its reads can be timed apart
            reads.named_segments = timed(reads.named_segments, stage["catalog_reads"])  # type: ignore[method-assign]
            services[runtime] = QueryService(reads, index, encode, settings.search_candidates)
        faiss_search = index.search
        candidates: list[np.ndarray] = []

        def faiss_kept(*args: Any) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = faiss_search(*args)
            candidates.append(ids)
            return scores, ids
        rng = np.random.default_rng(0)
        texts = [" ".join(rng.choice(WORDS, 5)) + f" {i}" for i in range(args.queries + 10)]
        for i, text in enumerate(texts):  # round-robin: the machine's load falls on every runtime alike
            for runtime, service in services.items():
                index.search = timed(faiss_kept, times[runtime]["faiss"])  # type: ignore[method-assign]
                candidates.clear()
                result = service.search(text)
                times[runtime]["total"].append(result.timings_ms["total"])
                every = timed(catalog.named_segments, times[runtime]["every_candidate_read"])
                every(np.concatenate(candidates).tolist())
                if i < 10:  # warm-up
                    for values in times[runtime].values():
                        values.clear()
        index.search = faiss_search  # type: ignore[method-assign]
        rows = [{"text_runtime": runtime, **{f"{stage}_p50": latency_percentiles(values)["p50"] for stage, values in stage_times.items()},
                 "total_p99": latency_percentiles(stage_times["total"])["p99"]}
                for runtime, stage_times in times.items()]
        for service in services.values():
            service.catalog.dispose()
        catalog.dispose()
    machine = machine_description()
    print(f"# one search in-process: {args.model} ({args.pretrained} weights), {index.structure} index of "
          f"{args.segments} segments, {args.queries} queries")
    print(f"machine: {machine['cpu']} ({machine['capability']}), {machine['cores']} cores, {args.threads} thread(s), "
          f"load {machine['load_1min']:.2f}\n")
    print(markdown_table([Column("text_runtime", "text runtime"), Column("encode_p50", "text encoder p50 ms", "{:.2f}"),
                          Column("faiss_p50", "FAISS p50 ms", "{:.2f}"),
                          Column("catalog_reads_p50", "catalog reads p50 ms", "{:.2f}"),
                          Column("total_p50", "search p50 ms", "{:.2f}"), Column("total_p99", "search p99 ms", "{:.2f}"),
                          Column("every_candidate_read_p50", "baseline: reading every candidate p50 ms", "{:.2f}")],
                         rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
