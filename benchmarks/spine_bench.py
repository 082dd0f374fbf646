"""End-to-end spine benchmark: ingestion frames/s and API query latency, encoders side by side.

For each encoder (same process, same videos, same machine state), ingest the sample videos into a
fresh SQLite catalog with the real pipeline (decode -> sample -> encode -> catalog), then serve the
Flask app on localhost and send distinct text queries one after another over HTTP.

    python -m benchmarks.spine_bench --model ViT-B-32 --pretrained random --encoders full,tempme --queries 100

Reports ingest frames/s (sampled frames / wall time of the jobs, decoding included) and query
latency percentiles measured by the client (HTTP + JSON included), plus the ratios to the first
encoder. Random weights are fine for speed; they say nothing about answer quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from werkzeug.serving import make_server

from benchmarks.common import (
    Column,
    distinct_queries,
    latency_percentiles,
    markdown_table,
)
from indexer.samples import ensure_samples
from indexer.service import build_runtime
from search.api import create_app
from search.settings import Settings


@dataclass
class SpineResult:
    encoder: str
    videos: int
    frames: int
    ingest_seconds: float
    frames_per_second: float
    query_p50_ms: float
    query_p95_ms: float
    query_p99_ms: float
    server_total_p50_ms: float


COLUMNS = (
    Column("encoder", "encoder", "{}"),
    Column("ingest_seconds", "ingest s", "{:.2f}"),
    Column("frames_per_second", "frames/s", "{:.2f}"),
    Column("speedup", "× first", "{:.2f}"),
    Column("query_p50_ms", "query p50 ms", "{:.1f}"),
    Column("query_p95_ms", "query p95 ms", "{:.1f}"),
    Column("query_p99_ms", "query p99 ms", "{:.1f}"),
    Column("server_total_p50_ms", "server p50 ms", "{:.1f}"),
)


def run_encoder(encoder: str, base: Settings, videos: list[Path], queries: list[str]) -> SpineResult:
    with tempfile.TemporaryDirectory(prefix=f"spine-{encoder}-") as tmp:
        settings = base.with_overrides(data_dir=Path(tmp), encoder=encoder)
        runtime = build_runtime(settings)
        ingestor = runtime.ingestor()
        start = time.perf_counter()
        for path in videos:
            ingestor.run_job(runtime.catalog.create_job(path).id)
        ingest_seconds = time.perf_counter() - start
        frames = sum(v.frames_sampled for v in runtime.catalog.list_videos(limit=10_000)[0])
        runtime.index.refresh(force=True)

        server = make_server("127.0.0.1", 0, create_app(runtime.api_context()), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base_url = f"http://127.0.0.1:{server.server_port}/api/search?"
        client_ms, server_ms = [], []
        for q in queries:
            t0 = time.perf_counter()
            with urllib.request.urlopen(base_url + urllib.parse.urlencode({"q": q, "k": 10})) as resp:
                body = json.load(resp)
            client_ms.append((time.perf_counter() - t0) * 1e3)
            server_ms.append(body["timings_ms"]["total"])
        server.shutdown()
        runtime.catalog.dispose()
    return SpineResult(
        encoder, len(videos), frames, round(ingest_seconds, 2), round(frames / ingest_seconds, 2),
        *(latency_percentiles(client_ms)[p] for p in ("p50", "p95", "p99")),
        round(statistics.median(server_ms), 2),
    )


def main(argv: list[str] | None = None) -> list[SpineResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--encoders", default="full,tempme")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--videos", type=Path, default=None, help="folder of videos (default: the samples)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="spine-samples-") as sample_dir:
        videos = sorted(args.videos.glob("*.mp4")) if args.videos else ensure_samples(Path(sample_dir))
        base = Settings(model=args.model, pretrained=args.pretrained, model_config_dir=args.model_config_dir,
                        device="cpu", media_roots=(videos[0].parent,), log_level="WARNING", log_format="text")
        queries = distinct_queries(args.queries)
        results = [run_encoder(name, base, videos, queries) for name in args.encoders.split(",")]

    ref = results[0]
    print(f"\n{args.model} ({args.pretrained} weights), {ref.videos} videos, {ref.frames} sampled frames, "
          f"{args.queries} sequential queries, {args.threads} threads")
    rows = [asdict(r) | {"speedup": r.frames_per_second / ref.frames_per_second} for r in results]
    print(markdown_table(COLUMNS, rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    main()
