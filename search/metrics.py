"""vidseek's Prometheus metrics: what the API, the query service and the ingestion pipeline count.

Defined here, in ``search``, so that ``search`` (requests, search stages) and ``indexer`` (ingestion)
record into the same metrics without ``search`` importing ``indexer``; ``models`` records nothing.
Recording costs a lock and a float add (an mmapped one in multiprocess mode); nothing here touches
the catalog. Gauges that describe state (index size, jobs by status) are not kept here but read
when scraped (``search.metrics_exposition``).

Under ``vidseek serve`` (gunicorn's processes) and ``vidseek worker --metrics-port`` (Celery's pool
processes) prometheus_client runs in multiprocess mode: those commands point
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before this module is first imported
(``indexer.metrics_folder``), each process writes its samples there, and a scrape adds them up.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()  # no *_created series: Prometheus sees counter resets without them

# Seconds. Requests: a search on CPU takes ~10-100 ms, an upload or a cold model seconds.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Search stages: an exact index search is sub-millisecond on a small library, the llm reranker up to
# VIDSEEK_RERANK_TIMEOUT (10 s by default).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # the route label of requests no URL rule matched (404, 405)

HTTP_REQUESTS = Counter(
    "vidseek_http_requests", "HTTP requests answered, by route (the URL rule, not the path), method and status code",
    ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "vidseek_http_request_duration_seconds", "Time to build the response (a streamed body not included), by route",
    ["route"], buckets=REQUEST_BUCKETS)

# QueryService.search's timings_ms keys -> the stage label they are recorded under.
SEARCH_STAGES = {"encode": "encode", "lookup": "lookup", "search": "index", "text": "text", "group": "catalog",
                 "rerank": "rerank"}
SEARCH_STAGE_LATENCY = Histogram(
    "vidseek_search_stage_duration_seconds",
    "Time per search stage: encode (query text or example picture), lookup (the stored moment of a "
    "'more like this' search), index (FAISS and the candidates' catalog reads), text (full-text ranking and fusion, mode=hybrid), "
    "catalog (grouping by video), rerank (when asked for)",
    ["stage"], buckets=STAGE_BUCKETS)
_STAGE_HISTOGRAMS = {key: SEARCH_STAGE_LATENCY.labels(stage) for key, stage in SEARCH_STAGES.items()}

FRAMES_ENCODED = Counter("vidseek_ingest_frames_encoded", "Sampled frames the segment encoder embedded (after frame dropping)")
ENCODE_SECONDS = Counter("vidseek_ingest_encode_seconds", "Seconds spent in the segment encoder (the ViT forward passes)")
DECODE_ERRORS = Counter("vidseek_ingest_decode_errors", "Ingestion jobs failed because the file could not be decoded, by kind",
                        ["kind"])


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request; a method outside ``HTTP_METHODS`` is counted as ``other`` (clients choose it)."""
    HTTP_REQUESTS.labels(route, method if method in HTTP_METHODS else "other", str(status)).inc()
    HTTP_LATENCY.labels(route).observe(seconds)


def observe_search(timings_ms: Mapping[str, float]) -> None:
    """The stages of one search, from its ``timings_ms`` (milliseconds; stages that did not run are absent)."""
    for key, histogram in _STAGE_HISTOGRAMS.items():
        if key in timings_ms:
            histogram.observe(timings_ms[key] / 1e3)


def observe_encoding(frames: int, seconds: float) -> None:
    """The segment encoder embedded ``frames`` frames in ``seconds``."""
    FRAMES_ENCODED.inc(frames)
    ENCODE_SECONDS.inc(seconds)


def count_decode_error(kind: str) -> None:
    """A job failed on an undecodable file; ``kind`` is one of ``indexer.decode.DECODE_ERROR_KINDS``."""
    DECODE_ERRORS.labels(kind).inc()
