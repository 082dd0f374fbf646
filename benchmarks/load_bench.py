"""Load benchmark (not a test): query throughput and latency of the API under concurrent clients,
and ingestion throughput with 1 and 2 Celery workers, on this machine's Redis and PostgreSQL.

    PYTHONPATH=. python benchmarks/load_bench.py query  --segments 1000000 --clients 1 8 --requests 400
    PYTHONPATH=. python benchmarks/load_bench.py ingest --workers 1 2 --videos 8

``query`` fills a fresh catalog with synthetic segments (unit vectors in the model's embedding
space, ``--per-video`` per video), starts ``vidseek serve`` (gunicorn) on it and lets
``--clients`` threads (each count in turn) send ``--requests`` searches in total, each with a
distinct text (so every request runs the text encoder: no cache hits), over keep-alive
connections; it does so with the text batcher off and on (``--text-batch``) and for each text
runtime asked for (``--text-runtime``: torch, onnx, onnx-int8; ``models/text_onnx.py``) and IVF
list storage (``--index-lists``: fp32, fp16; an index snapshot built for each), one server
after the other on the same catalog, and reports the server's mean time per query in the text encoder
(waiting for a shared forward included), the index and the catalog reads. ``ingest`` generates
``--videos`` distinct synthetic videos, starts N ``vidseek worker`` processes, warms each up (model
loaded), queues every video and times them from the first job's start to the last one's end.

Both use ``VIDSEEK_MODEL`` (default ViT-B-32) with random weights unless ``--pretrained`` is
given: the compute is the same as with trained weights. Results are printed with the CPU model and
capability and, with ``--json``, appended to a file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from sqlalchemy import insert

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import latency_percentiles, machine_description, temporary_database
from indexer.samples import HEIGHT, WIDTH, write_video  # noqa: E402
from indexer.service import open_index, settings_space_key  # noqa: E402
from indexer.tasks import CeleryQueue, make_celery  # noqa: E402
from models.factory import model_embed_dim  # noqa: E402
from models.registry import TEXT_RUNTIMES  # noqa: E402
from search.catalog import Catalog, embedding_to_bytes  # noqa: E402
from search.db import upgrade  # noqa: E402
from search.settings import LIST_STORAGE, Settings  # noqa: E402
from search.tables import Segment, Status, Video  # noqa: E402

WORDS = ("red ball rolling dog frisbee beach sunset snow falling city street night car bike "
         "stripes scrolling bird flying water waves mountain forest crowd dancing kitchen").split()


# ----- shared ------------------------------------------------------------------------------------
def process_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDSEEK_")}
    env.update(
        VIDSEEK_DATA_DIR=str(settings.data_dir), VIDSEEK_DATABASE_URL=settings.database_url,
        VIDSEEK_BROKER_URL=settings.broker_url, VIDSEEK_TASK_QUEUE=settings.task_queue,
        VIDSEEK_MEDIA_ROOTS=os.pathsep.join(str(p) for p in settings.media_roots), VIDSEEK_MODEL=settings.model,
        VIDSEEK_PRETRAINED=settings.pretrained, VIDSEEK_DEVICE=settings.device, VIDSEEK_LOG_LEVEL="WARNING",
        VIDSEEK_LOG_FORMAT="text", PYTHONPATH=str(REPO),
    )
    if settings.model_config_dir is not None:
        env["VIDSEEK_MODEL_CONFIG_DIR"] = str(settings.model_config_dir)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "indexer.cli", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, 15)
    for p in procs:
        p.wait(timeout=60)


# ----- queries -----------------------------------------------------------------------------------
def fill_catalog(catalog: Catalog, key: str, dim: int, segments: int, per_video: int, seed: int = 0,
                 held: int = 0) -> None:
    """``segments`` synthetic segments (L2-normalised random vectors), ``per_video`` per video, in bulk
    transactions of 20 000; ``held`` > 0 resumes an interrupted fill (the videos and that many
    segments are there)."""
    rng = np.random.default_rng(seed + held)
    videos = -(-segments // per_video)
    if not held:
        with catalog.session() as s:
            s.execute(insert(Video), [
                {"id": v + 1, "path": f"/media/synthetic/{v:07d}.mp4", "title": f"synthetic {v}", "content_hash": f"{v:064x}",
                 "size_bytes": 0, "duration": 12.0 * per_video, "status": Status.done, "embedding_key": key,
                 "frames_sampled": 0}
                for v in range(videos)
            ])
    for first in range(held, segments, 20_000):
        n = min(20_000, segments - first)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with catalog.session() as s:
            s.execute(insert(Segment), [
                {"video_id": (first + i) // per_video + 1, "ordinal": (first + i) % per_video, "start": 12.0 * ((first + i) % per_video),
                 "end": 12.0 * ((first + i) % per_video + 1), "frame_count": 12, "thumbnail": None, "embedding_key": key,
                 "embedding": embedding_to_bytes(vectors[i])}
                for i in range(n)
            ])


def run_clients(port: int, clients: int, requests: int, k: int) -> tuple[list[float], float, int, dict[str, float]]:
    """``requests`` searches from ``clients`` threads; returns (latencies s, wall s, errors, the
    server's mean time per stage in ms: text encoding, FAISS search, grouping with catalog reads)."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rng = np.random.default_rng(worker)
        for i in counter:
            q = " ".join(rng.choice(WORDS, 5)) + f" {worker}-{i}"
            t0 = time.perf_counter()
            conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": k}))
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                errors[0] += resp.status != 200
                if resp.status == 200:
                    stages.append(json.loads(body)["timings_ms"])

    start_t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    mean_stages = {name: round(float(np.mean([t[name] for t in stages])), 1) for name in (stages[0] if stages else {})}
    return latencies, time.perf_counter() - start_t, errors[0], mean_stages


def wait_ready(port: int, segments: int, api: subprocess.Popen, log: Path, timeout: float = 1800) -> None:
    """Until ``/healthz`` reports every segment indexed (the server built or loaded its index)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if json.loads(conn.getresponse().read()).get("index_segments") == segments:
                return
        except OSError:
            pass
        if api.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(log.read_text()[-3000:])
        time.sleep(1)


def serve_and_measure(args: argparse.Namespace, settings: Settings) -> list[dict]:
    """A server for each text batching, text runtime and search threads asked for, on the index
    snapshot ``settings`` left in its data folder, measured with each ``--clients`` count."""
    rows = []
    servers = [(b, r, t) for b in args.text_batch for r in args.text_runtime for t in args.search_threads]
    for batching, text_runtime, search_threads in servers:
        env = {**process_env(settings), "VIDSEEK_INDEX_TYPE": args.index_type,
               "VIDSEEK_INDEX_LISTS": settings.index_lists,
               "VIDSEEK_TEXT_BATCH_MAX": "32" if batching == "on" else "1", "VIDSEEK_TEXT_RUNTIME": text_runtime,
               "VIDSEEK_SEARCH_THREADS": str(search_threads),
               "OMP_NUM_THREADS": str(args.torch_threads), "MKL_NUM_THREADS": str(args.torch_threads)}
        port = 18000 + os.getpid() % 1000
        log = settings.data_dir / f"api-{settings.index_lists}-{batching}-{text_runtime}-{search_threads}.log"
        t0 = time.perf_counter()
        api = start(["serve", "--port", str(port), "--workers", str(args.processes), "--threads", str(args.threads)],
                    env, log)
        try:
            wait_ready(port, args.segments, api, log)
            print(f"server (lists {settings.index_lists}, text batcher {batching}, text runtime {text_runtime}, "
                  f"search threads {search_threads or 'auto'}) ready in {time.perf_counter() - t0:.1f}s", flush=True)
            for clients in args.clients:
                run_clients(port, clients, clients * 4, args.k)  # warm up every process and thread
                latencies, wall, errors, stages = run_clients(port, clients, args.requests, args.k)
                rows.append({
                    "benchmark": "query", "machine": machine_description(), "model": args.model,
                    "index": args.index_type, "index_lists": settings.index_lists, "segments": args.segments,
                    "text_batcher": batching,
                    "text_runtime": text_runtime, "search_threads": search_threads,
                    "clients": clients, "requests": args.requests, "k": args.k,
                    "api": f"{args.processes} processes x {args.threads} threads", "errors": errors,
                    "throughput_rps": round(len(latencies) / wall, 1),
                    "latency_ms": latency_percentiles([t * 1e3 for t in latencies]),
                    "server_stage_ms": stages,
                })
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop([api])
    return rows


def bench_query(args: argparse.Namespace) -> list[dict]:
    """One catalog; for each ``--index-lists`` an index snapshot of it, served by each server of
    :func:`serve_and_measure` in turn."""
    rows = []
    database = nullcontext(args.database_url) if args.database_url else temporary_database("vidseek_bench")
    with database as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url, model=args.model, pretrained=args.pretrained,
                            model_config_dir=args.model_config_dir, device="cpu", index_type=args.index_type)
        upgrade(url)
        catalog = Catalog(url)
        key, dim = settings_space_key(settings), model_embed_dim(settings.model, settings.model_config_dir)
        held = catalog.count_segments(key)
        if held > args.segments or held % 20_000:
            raise SystemExit(f"{url} holds {held} segments: not a fill of {args.segments} by this script")
        t0 = time.perf_counter()
        fill_catalog(catalog, key, dim, args.segments, args.per_video, held=held)
        print(f"catalog: {args.segments} segments in {time.perf_counter() - t0:.1f}s", flush=True)
        for lists in args.index_lists:
            listed = settings.with_overrides(index_lists=lists)
            t0 = time.perf_counter()
            index = open_index(listed, catalog, key, dim)  # built once, as `vidseek index rebuild` would:
            index.refresh(force=True)  # every server process loads the snapshot instead of building its own
            index.save()
            print(f"index: {len(index)} segments, {index.structure}, lists {lists}, built in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
            del index
            rows += serve_and_measure(args, listed)
        catalog.dispose()
    return rows


# ----- ingestion ---------------------------------------------------------------------------------
def synthetic_videos(folder: Path, count: int, seconds: int) -> list[Path]:
    """``count`` distinct clips (a ball of its own colour and speed) of ``seconds`` seconds."""
    paths = []
    for i in range(count):
        color = np.array([(37 * i) % 256, (91 * i + 80) % 256, (53 * i + 160) % 256], np.uint8)

        def paint(t: float, yy: np.ndarray, xx: np.ndarray, i: int = i, color: np.ndarray = color) -> np.ndarray:
            img = np.full((HEIGHT, WIDTH, 3), 30 + 4 * i, np.uint8)
            cx, cy = (40 + (10 + i) * t) % WIDTH, HEIGHT / 2 + 60 * np.sin(t / (2 + i))
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 30**2] = color
            return img

        paths.append(write_video(folder / f"clip_{i:03d}.mp4", paint, seconds, fps=8))
    return paths


def wait_jobs(catalog: Catalog, job_ids: list[int], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [catalog.get_job(j) for j in job_ids]
        if all(j.status in (Status.done, Status.failed) for j in jobs):
            return jobs
        time.sleep(0.5)
    raise SystemExit(f"jobs not finished after {timeout}s")


def bench_ingest_once(args: argparse.Namespace, workers: int, media: Path, videos: list[Path], warmups: list[Path]) -> dict:
    with temporary_database("vidseek_bench") as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url, broker_url=args.broker_url, media_roots=(media,),
                            task_queue=f"bench-{uuid.uuid4().hex[:8]}", model=args.model, pretrained=args.pretrained,
                            model_config_dir=args.model_config_dir, device="cpu")
        upgrade(url)
        catalog = Catalog(url)
        queue = CeleryQueue(make_celery(settings))
        threads = str(max(1, (os.cpu_count() or 1) // workers))  # the workers share the machine's cores
        env = {**process_env(settings), "VIDSEEK_BATCH_SEGMENTS": str(args.batch_segments),
               "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        procs = [start(["worker", f"--hostname=bench{w}@%h"], env, Path(tmp) / f"worker{w}.log") for w in range(workers)]
        try:
            # Warm-up: every worker loads its model on a short clip before the clock starts.
            used: set[str] = set()
            for clip in warmups:
                if len(used) == workers:
                    break
                job = catalog.create_job(clip)
                queue.enqueue(job.id)
                done = wait_jobs(catalog, [job.id], 600)[0]
                used.add(done.worker.split("/")[0])
            jobs = [catalog.create_job(v) for v in videos]
            for job in jobs:
                queue.enqueue(job.id)
            finished = wait_jobs(catalog, [j.id for j in jobs], 3600)
        finally:
            stop(procs)
        window = (max(j.finished_at for j in finished) - min(j.started_at for j in finished)).total_seconds()
        segments = sum(len(catalog.segments_of(j.video_id)) for j in finished)
        video_seconds = sum(catalog.get_video(j.video_id).duration for j in finished)
        frames = sum(catalog.get_video(j.video_id).frames_sampled for j in finished)
        failed = [j.error for j in finished if j.status is not Status.done]
        catalog.dispose()
    return {
        "benchmark": "ingest", "machine": machine_description(), "model": args.model, "workers": workers,
        "torch_threads_per_worker": int(threads), "videos": len(videos),
        "failed": failed, "seconds": round(window, 1), "videos_per_min": round(60 * len(videos) / window, 2),
        "video_seconds_per_s": round(video_seconds / window, 2), "frames_per_s": round(frames / window, 2),
        "segments": segments,
    }


def bench_ingest(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        videos = synthetic_videos(media / "set", args.videos, args.seconds)
        warmups = synthetic_videos(media / "warmup", max(args.workers) * 3, 2)
        return [bench_ingest_once(args, w, media, videos, warmups) for w in args.workers]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("VIDSEEK_MODEL", "ViT-B-32"))
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--model-config-dir", type=Path, default=None, help="extra open_clip model configs (*.json)")
    parser.add_argument("--json", type=Path, help="append the results to this JSON-lines file")
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("query")
    q.add_argument("--segments", type=int, default=1_000_000)
    q.add_argument("--database-url", help="use (and keep) this catalog database, filled only when empty; "
                                          "default: a temporary PostgreSQL database")
    q.add_argument("--per-video", type=int, default=10)
    q.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    q.add_argument("--requests", type=int, default=400)
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--processes", type=int, default=2)
    q.add_argument("--threads", type=int, default=4)
    q.add_argument("--torch-threads", type=int, default=1)
    q.add_argument("--index-type", default="auto")
    q.add_argument("--text-batch", nargs="+", choices=("off", "on"), default=["off", "on"],
                   help="run a server with the text batcher off (VIDSEEK_TEXT_BATCH_MAX=1) and/or on")
    q.add_argument("--text-runtime", nargs="+", choices=TEXT_RUNTIMES, default=["auto"],
                   help="run a server with each VIDSEEK_TEXT_RUNTIME (after each --text-batch setting)")
    q.add_argument("--search-threads", type=int, nargs="+", default=[0],
                   help="run a server with each VIDSEEK_SEARCH_THREADS (0: auto; after each --text-runtime)")
    q.add_argument("--index-lists", nargs="+", choices=LIST_STORAGE, default=["fp32"],
                   help="build the index snapshot with each VIDSEEK_INDEX_LISTS in turn, each served by every "
                        "server above")
    i = sub.add_parser("ingest")
    i.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    i.add_argument("--videos", type=int, default=8)
    i.add_argument("--seconds", type=int, default=60)
    i.add_argument("--batch-segments", type=int, default=4)
    i.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args(argv)
    results = bench_query(args) if args.what == "query" else bench_ingest(args)
    for result in results:
        if args.what == "ingest":
            print(json.dumps(result))
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
    return results


if __name__ == "__main__":
    main()
