"""The text that ``/metrics`` and a worker's metrics port answer with: the recorded metrics
(``search.metrics``, every process's in multiprocess mode) plus gauges read at scrape time.

Index size, refresh age and jobs by status are read when Prometheus scrapes -- one ``GROUP BY`` on the
jobs table per scrape -- never per request. In multiprocess mode they describe the process that
answered the scrape (each gunicorn process holds its own index; they follow the same catalog).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:  # a Celery worker serving its metrics loads no FAISS
    from search.job_store import JobStore
    from search.segment_index import SegmentIndex

log = logging.getLogger(__name__)

# The Prometheus text format every Prometheus version reads (whatever the client's newest is).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_mode() -> bool:
    """Whether metrics are recorded to ``PROMETHEUS_MULTIPROC_DIR`` (decided when prometheus_client
    was first imported: the folder must have been set by then)."""
    return values.ValueClass is not values.MutexValue


def metrics_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of the recorded metrics -- read from every process's files in multiprocess mode,
    this process's otherwise -- and ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    for collector in collectors:
        registry.register(collector)
    return registry


def render(*collectors: Collector) -> bytes:
    """The Prometheus text exposition (:data:`CONTENT_TYPE`) of :func:`metrics_registry`."""
    return generate_latest(metrics_registry(*collectors))


class ServingStateCollector:
    """Gauges of a query process, read at scrape time: segments in its index, seconds since the index
    last pulled the catalog's changes, whether the catalog answers, and ingestion jobs by status."""

    def __init__(self, jobs: "JobStore", index: "SegmentIndex"):
        self.jobs, self.index = jobs, index

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("vidseek_index_segments", "Segments in this process's index (searchable now)",
                                value=len(self.index))
        age = self.index.refresh_age()
        if age is not None:
            yield GaugeMetricFamily("vidseek_index_refresh_age_seconds",
                                    "Seconds since this process's index last pulled catalog changes successfully",
                                    value=age)
        try:
            counts = self.jobs.job_status_counts()
        except SQLAlchemyError as exc:  # reported as a gauge: the scrape must still answer
            log.warning("metrics: catalog unreachable", extra={"error": f"{type(exc).__name__}: {exc}"})
            counts = None
        yield GaugeMetricFamily("vidseek_catalog_up", "1 when the catalog database answered this scrape, else 0",
                                value=int(counts is not None))
        if counts is not None:
            jobs = GaugeMetricFamily("vidseek_jobs", "Ingestion jobs in the catalog, by status", labels=["status"])
            for status, count in counts.items():
                jobs.add_metric([status.value], count)
            yield jobs
