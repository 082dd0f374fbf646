"""``vidseek`` command line: ingest, serve, worker, beat, demo, search, tag, db, index, export."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from indexer.bulk import ingest_paths
from indexer.evaluation.cli import add_eval_parser
from models.registry import AUTO
from models.weights import RANDOM_WEIGHTS, TextExportError, WeightsUnavailableError
from search.hybrid import SEARCH_MODES
from search.logs import configure_logging
from search.media_paths import PathNotAllowed
from search.settings import Settings, SettingsError

# The model stack (torch, open_clip, FAISS, Celery) is imported inside the commands that use it: the
# parser, a configuration error, ``--help`` and the maintenance commands start in a fraction of a
# second instead of the ~6 s the stack takes to import.

log = logging.getLogger("vidseek")


# ----- ingest ---------------------------------------------------------------------------------
def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    return ingest_paths(settings, args.paths, wait=args.wait)


# ----- serving --------------------------------------------------------------------------------
class PortUnavailable(OSError):
    """The server could not bind its address."""


def _unavailable(host: str, port: int, exc: OSError) -> PortUnavailable:
    return PortUnavailable(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                           "choose another port with --port or VIDSEEK_PORT (make demo PORT=8001)")


def check_port(host: str, port: int) -> None:
    """Fail now, not after minutes of ingestion, if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe_socket.bind((host, port))
        except OSError as exc:
            raise _unavailable(host, port, exc) from None


def serve(app, host: str, port: int) -> None:
    """The development server (one process, threads): for ``vidseek demo``. Says where it serves
    only once the socket is bound."""
    from werkzeug.serving import make_server

    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise _unavailable(host, port, exc) from None
    print(f"vidseek is serving on http://{host}:{server.server_port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """gunicorn with ``--workers`` processes of ``--threads`` threads each. Every process builds
    its own runtime (model and FAISS index, refreshed from the catalog); the app is not preloaded
    in the master because forking after torch has started its thread pools can hang."""
    from gunicorn.app.base import BaseApplication

    from indexer.metrics_folder import forget_process, shared_metrics_folder

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", args.timeout)
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("errorlog", "-")
            self.cfg.set("when_ready", lambda _arbiter: print(  # after binding, not before
                f"vidseek is serving on http://{args.host}:{args.port}/ with {args.workers} processes × {args.threads} threads",
                flush=True))
            self.cfg.set("child_exit", lambda _arbiter, worker: forget_process(worker.pid))

        def load(self):
            from indexer.service import create_service_app

            return create_service_app(settings)

    with shared_metrics_folder():  # /metrics adds up the processes' metrics
        Server().run()
    return 0


def serve_worker_metrics(host: str, port: int) -> None:
    """prometheus_client's HTTP server on ``host:port`` (a thread of this process), answering with the
    metrics of this worker and of its pool processes."""
    from celery.signals import worker_process_shutdown
    from prometheus_client import start_http_server

    from indexer.metrics_folder import forget_process
    from search.metrics_exposition import metrics_registry

    try:
        start_http_server(port, host, registry=metrics_registry())
    except OSError as exc:
        raise PortUnavailable(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                              "choose another port with --metrics-port") from None
    worker_process_shutdown.connect(lambda pid, **_: forget_process(pid), weak=False)
    print(f"worker metrics on http://{host}:{port}/metrics", flush=True)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if settings.runs_in_process:
        print("VIDSEEK_BROKER_URL is not set: a worker needs a broker (e.g. redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    if args.metrics_port is None:
        return run_worker(settings, args)
    from indexer.metrics_folder import shared_metrics_folder

    with shared_metrics_folder():  # the pool processes ingest: their metrics are added up
        serve_worker_metrics(args.metrics_host, args.metrics_port)
        return run_worker(settings, args)


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    from indexer.pipeline import VideoIngestor
    from indexer.service import load_encoder, open_catalog
    from indexer.spaces import active_settings
    from indexer.tasks import LazyIngestor, make_celery

    def factory() -> VideoIngestor:
        catalog = open_catalog(settings)
        model = active_settings(settings, catalog)  # re-indexing jobs load their space's model beside it
        return VideoIngestor(model, catalog, load_encoder(model), load_encoder=load_encoder)

    app = make_celery(settings, LazyIngestor(factory))
    argv = ["worker", f"--concurrency={args.concurrency}", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def cmd_beat(settings: Settings, args: argparse.Namespace) -> int:
    """Re-queue jobs whose worker died (see ``indexer.reaper``) until SIGTERM or Ctrl+C."""
    from indexer.reaper import run_beat
    from indexer.service import open_catalog
    from indexer.tasks import CeleryQueue, make_celery

    if settings.runs_in_process:
        print("VIDSEEK_BROKER_URL is not set: beat re-queues jobs through a broker", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    queue = CeleryQueue(make_celery(settings))
    try:
        run_beat(open_catalog(settings), settings, queue.enqueue, stop)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from indexer.samples import ensure_samples
    from indexer.service import SpaceFollower, build_runtime, load_model
    from search.api import create_app

    # the demo runs everything in this process, for a person at a terminal
    settings = settings.with_overrides(broker_url="", log_format="text", log_level="WARNING")
    configure_logging(settings.log_level, settings.log_format)
    check_port(args.host, args.port)
    samples = ensure_samples(settings.samples_dir)
    banner = None
    try:
        backbone = load_model(settings)
    except WeightsUnavailableError as exc:
        print(f"\n!! {exc}\n!! The demo continues with RANDOM weights so you can try the UI; "
              "search results will not be meaningful.\n!! To search this catalog from the shell meanwhile: "
              "VIDSEEK_PRETRAINED=random vidseek search \"a red ball\"\n", file=sys.stderr)
        banner = ("Running with random model weights: results are not meaningful. "
                  "Set VIDSEEK_PRETRAINED=/path/to/open_clip_pytorch_model.bin (or run where the "
                  "'openai' weights can be downloaded) and restart.")
        settings = settings.with_overrides(pretrained=RANDOM_WEIGHTS)
        backbone = load_model(settings)
    runtime = build_runtime(settings, backbone, banner)
    print(f"ingesting {len(samples)} sample videos from {settings.samples_dir}")
    ingest_paths(settings, samples, ingestor=runtime.ingestor())
    runtime.index.refresh(force=True)
    runtime.index.refresh_in_background()
    context = runtime.api_context()
    SpaceFollower(runtime, context).follow_in_background()
    serve(create_app(context), args.host, args.port)
    return 0


# ----- queries and maintenance ----------------------------------------------------------------
def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    """Search by text, by an example picture (``--image``, with or without text) or by a stored moment
    (``--like-segment``); the arguments and the picture are checked before the model loads."""
    from indexer.service import build_runtime
    from search.filters import FilterError, confined_filters
    from search.query import QueryError, SearchOptions, validate_text, validate_weight
    from search.query_image import read_image

    text = image = None
    try:  # before the model loads: a typo costs no wait
        if args.like_segment is not None and (args.query or args.image):
            raise QueryError("--like-segment searches with a stored moment alone: give no query and no --image")
        if args.query or (args.image is None and args.like_segment is None):
            text = validate_text(args.query or "")
        if args.image is not None:
            validate_weight(args.image_weight)
            image = read_image(args.image, settings.max_image_bytes)
        filters = confined_filters(args.video_id, args.min_duration, args.max_duration, args.folder,
                                   settings.allowed_media_roots, args.tag, args.ingested_after, args.ingested_before)
        options = SearchOptions(args.k, None, filters, args.min_score, args.offset, args.mode)
        if options.mode == "hybrid" and text is None:
            raise QueryError("--mode hybrid matches the query's words: give a query")
    except (QueryError, FilterError, PathNotAllowed, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.text_runtime == AUTO:  # one query: torch answers it sooner than an ONNX export would
        settings = settings.with_overrides(text_runtime="torch")
    runtime = build_runtime(settings)
    queries = runtime.queries
    try:
        if args.like_segment is not None:
            query = queries.like_query(args.like_segment)
        elif image is not None:
            query = queries.image_query(image, text, args.image_weight)
        else:
            query = queries.text_query(text)
        result = queries.search_vector(query, options)
    except QueryError as exc:  # e.g. no such segment
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not result.hits:
        print("no matching videos")
    for rank, hit in enumerate(result.hits, args.offset + 1):
        found_by = f"  ({'+'.join(hit.fusion.signals)})" if hit.fusion is not None else ""
        print(f"{rank:2d}. {hit.score:.4f}  {hit.title}  [{hit.moment.start:.1f}s–{hit.moment.end:.1f}s]  "
              f"segment {hit.moment.segment_id}{found_by}")
    print(f"({result.query}; {result.timings_ms['total']:.1f} ms)")
    return 0


def cmd_tag(settings: Settings, args: argparse.Namespace) -> int:
    """Set a video's tags (``--set a,b``; ``--set ""`` removes them) and/or its title."""
    from search.video_metadata import MetadataError, normalise_tags, normalise_title, split_tags

    if args.set is None and args.title is None:
        print("error: give --set TAGS and/or --title TITLE", file=sys.stderr)
        return 2
    try:
        tags = normalise_tags(split_tags(args.set)) if args.set is not None else None
        title = normalise_title(args.title) if args.title is not None else None
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from indexer.service import open_catalog

    catalog = open_catalog(settings)
    video = catalog.set_metadata(args.video_id, title, tags)
    if video is None:
        print(f"error: no video {args.video_id}", file=sys.stderr)
        return 1
    shown = catalog.tags_of([video.id]).get(video.id, [])
    print(f"video {video.id}: {video.title}  tags: {', '.join(shown) if shown else '(none)'}")
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from search.db import current_revision, upgrade

    url = settings.resolved_database_url
    if args.action == "upgrade":
        upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return 0


def cmd_index(settings: Settings, args: argparse.Namespace) -> int:
    from indexer.service import open_catalog, open_index, settings_space_key
    from indexer.spaces import active_settings
    from models.factory import model_embed_dim

    catalog = open_catalog(settings)
    settings = active_settings(settings, catalog)
    dim = model_embed_dim(settings.model, settings.model_config_dir)
    index = open_index(settings, catalog, settings_space_key(settings), dim)
    folder = settings.resolved_index_dir
    if args.action == "rebuild":
        report = index.rebuild()
        print(f"index rebuilt from the catalog: {report.total} segments in {folder}")
        return 0
    checked = index.verify(repair=not args.check)
    print(f"catalog {checked.catalog} segments, index {checked.indexed} entries: missing {checked.missing}, "
          f"extra {checked.extra}, duplicated {checked.duplicated}, mismatched {checked.mismatched}")
    if checked.consistent:
        print(f"the index in {folder} matches the catalog")
        return 0
    if checked.repaired:
        print(f"repaired: the index in {folder} now matches the catalog (restart API replicas to load it)")
        return 0
    print("the index does not match the catalog (run without --check to repair it)", file=sys.stderr)
    return 1


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    """Re-index into a new embedding space without downtime, or drop the old one's vectors (``indexer.reindex``)."""
    from indexer.reindex import drop_old, reindex, target_settings

    if args.drop_old:
        if args.model or args.pretrained or args.encoder or args.tempme_weights:
            print("error: --drop-old takes no model options", file=sys.stderr)
            return 2
        return drop_old(settings)
    named = (args.model, args.pretrained, args.encoder, args.tempme_weights)
    try:
        target = target_settings(settings, *named) if any(v is not None for v in named) else None
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return reindex(settings, target, wait=args.wait)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Segment embeddings of the active embedding space and their metadata, to files (``search.export``)."""
    from search.export import ExportError, check_destination, export_segments

    try:
        check_destination(args.out)  # before the model stack and the catalog load: a typo costs no wait
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from indexer.service import open_catalog, settings_space_key
    from indexer.spaces import active_settings

    catalog = open_catalog(settings)
    key = settings_space_key(active_settings(settings, catalog))
    with tqdm(total=catalog.count_segments(key), desc="exporting", unit="segment", disable=None) as bar:
        done = export_segments(catalog, key, args.out, args.format, args.chunk_size, bar.update)
    if not done.segments:
        others = catalog.count_segments()
        hint = f" ({others} segments are in other spaces: set VIDSEEK_MODEL / VIDSEEK_ENCODER as when they were ingested)" if others else ""
        print(f"nothing to export: the catalog has no segments in embedding space {key}{hint}; nothing was written",
              file=sys.stderr)
        return 0
    print(f"exported {done.segments} segments ({done.dim} floats each, space {key}) "
          f"in {len(done.files)} files to {done.out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# search.export's FORMATS and DEFAULT_CHUNK_SIZE, spelled out so that building the parser imports no
# pyarrow (tests/test_export.py checks that they agree).
EXPORT_FORMATS = ("npy", "parquet")
EXPORT_CHUNK_SIZE = 100_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidseek", description="Text-to-video retrieval search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest video files or folders (recursively)")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--no-wait", dest="wait", action="store_false", help="with a broker: queue and return")
    p.set_defaults(func=cmd_ingest)

    for name, func, help_text in (("serve", cmd_serve, "serve the web UI and REST API with gunicorn"),
                                  ("demo", cmd_demo, "ingest the sample videos and serve the UI")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=None, help="default: VIDSEEK_PORT (8000)")
        p.set_defaults(func=func)
        if name == "serve":
            p.add_argument("--workers", type=int, default=2, help="processes, each with its own model and index")
            p.add_argument("--threads", type=int, default=4, help="request threads per process")
            p.add_argument("--timeout", type=int, default=120, help="seconds before a stuck process is restarted")

    p = sub.add_parser("worker", help="run a Celery ingestion worker")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--hostname", default=None)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics (ingestion counters of every pool process) on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics port (default: 127.0.0.1)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="re-queue jobs whose worker died (run one or more next to the workers)")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("search", help="query from the command line: by text, by an example picture, or by a moment")
    p.add_argument("query", nargs="?", default=None, help="the text to search for (optional with --image)")
    p.add_argument("--image", type=Path, default=None, help="search by this picture (JPEG, PNG or WebP); with a query, by both")
    p.add_argument("--image-weight", type=float, default=0.5,
                   help="the picture's share when a query is given too, 0 to 1 (default: 0.5)")
    p.add_argument("--like-segment", type=int, default=None, metavar="N",
                   help="more moments like segment N (its id in search results); N itself is left out")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--offset", type=int, default=0, help="skip the best OFFSET videos (paging)")
    p.add_argument("--min-score", type=float, default=None, help="drop moments whose cosine score is below this")
    p.add_argument("--video-id", type=int, action="append", help="search only this video (repeat for several)")
    p.add_argument("--folder", default=None, help="search only videos under this folder (inside the media roots)")
    p.add_argument("--min-duration", type=float, default=None, help="seconds")
    p.add_argument("--max-duration", type=float, default=None, help="seconds")
    p.add_argument("--tag", action="append", help="search only videos with this tag (repeat: videos with all of them)")
    p.add_argument("--ingested-after", default=None,
                   help="search only videos added at or after this ISO 8601 instant (no offset: UTC)")
    p.add_argument("--ingested-before", default=None, help="search only videos added before this ISO 8601 instant")
    p.add_argument("--mode", choices=SEARCH_MODES, default="vector",
                   help="hybrid: also match the query's words in titles, file names and tags (default: vector)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("tag", help="set a video's tags and/or title")
    p.add_argument("video_id", type=int)
    p.add_argument("--set", default=None, metavar="TAGS", help='comma-separated tags replacing the video\'s ("" removes them)')
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("db", help="catalog database schema")
    p.add_argument("action", choices=["upgrade", "current"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("index", help="FAISS index maintenance: rebuild it, or verify it against the catalog")
    p.add_argument("action", choices=["rebuild", "verify"])
    p.add_argument("--check", action="store_true", help="verify only: report differences, repair nothing (exit 1)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("reindex", help="re-encode every video into a new embedding space while searches go on, "
                                       "then switch to it; or --drop-old")
    p.add_argument("--model", default=None, help="open_clip architecture of the new space (default: VIDSEEK_MODEL)")
    p.add_argument("--pretrained", default=None, help="its weights: an open_clip tag or a checkpoint file")
    p.add_argument("--encoder", default=None, help="segment encoder of the new space (default: VIDSEEK_ENCODER)")
    p.add_argument("--tempme-weights", type=Path, default=None, help="TempMe checkpoint of the new space")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="with a broker: queue and return")
    p.add_argument("--drop-old", action="store_true", help="delete the vectors of the spaces that were active before")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("export", help="write segment embeddings and metadata to files (clip-retrieval's layout, or parquet)")
    p.add_argument("out", type=Path, help="a new or empty folder")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="npy",
                   help="npy: img_emb/img_emb_N.npy beside metadata/metadata_N.parquet; parquet: segments_N.parquet "
                        "with an embedding column (default: npy)")
    p.add_argument("--chunk-size", type=_positive_int, default=EXPORT_CHUNK_SIZE,
                   help=f"segments per file (default: {EXPORT_CHUNK_SIZE})")
    p.set_defaults(func=cmd_export)
    add_eval_parser(sub)
    return parser


# Commands a person runs at a terminal and reads the answer of; services (serve, worker, beat) log JSON.
INTERACTIVE_COMMANDS = ("search", "ingest", "export", "tag", "reindex")


def interactive_logging(settings: Settings, command: str, environ: Mapping[str, str], terminal: bool) -> Settings:
    """``settings`` with readable text logs at WARNING for an interactive command whose stderr is a
    terminal -- unless ``VIDSEEK_LOG_FORMAT`` / ``VIDSEEK_LOG_LEVEL`` say otherwise."""
    if command not in INTERACTIVE_COMMANDS or not terminal:
        return settings
    changes = {}
    if not environ.get("VIDSEEK_LOG_FORMAT"):
        changes["log_format"] = "text"
    if not environ.get("VIDSEEK_LOG_LEVEL"):
        changes["log_level"] = "WARNING"
    return settings.with_overrides(**changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    settings = interactive_logging(settings, args.command, os.environ, sys.stderr.isatty())
    if getattr(args, "port", "absent") is None:
        args.port = settings.port
    configure_logging(settings.log_level, settings.log_format)
    try:
        return args.func(settings, args)
    except (WeightsUnavailableError, TextExportError, PortUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
