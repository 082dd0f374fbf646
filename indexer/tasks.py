"""Running ingestion jobs: a Celery task for workers, or an in-process queue (embedded default).

Celery: ``vidseek worker`` consumes ``vidseek.ingest_video`` tasks from ``VIDSEEK_BROKER_URL``
(Redis in production). Tasks are acknowledged late, so a worker killed mid-video leaves its task
to be delivered again; the job itself is idempotent (see ``indexer.pipeline``).

In-process (no broker configured): jobs run on one background thread of the current process.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from celery import Celery
from sqlalchemy.exc import OperationalError

from indexer.decode import probe
from indexer.pipeline import VideoIngestor
from search.settings import Settings

log = logging.getLogger(__name__)

INGEST_TASK = "vidseek.ingest_video"
IngestorFactory = Callable[[], VideoIngestor]


class LazyIngestor:
    """Builds the (model-loading) ingestor on first use, once per process, thread-safely."""

    def __init__(self, factory: IngestorFactory):
        self._factory = factory
        self._lock = threading.Lock()
        self._ingestor: VideoIngestor | None = None

    def get(self) -> VideoIngestor:
        with self._lock:
            if self._ingestor is None:
                self._ingestor = self._factory()
            return self._ingestor


def make_celery(settings: Settings, ingestor: LazyIngestor | None = None) -> Celery:
    """The Celery app for ``settings.broker_url`` with the ``ingest_video`` task registered.

    ``ingestor`` is only needed in worker processes; producers (API, CLI) just send tasks.
    """
    app = Celery("vidseek", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=settings.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
    )

    @app.task(
        name=INGEST_TASK,
        bind=True,
        autoretry_for=(OperationalError, ConnectionError),
        retry_backoff=True,
        retry_backoff_max=300,
        max_retries=8,
    )
    def ingest_video(task, job_id: int) -> str:
        if ingestor is None:
            raise RuntimeError("this Celery app was built without an ingestor (producer only)")
        return ingestor.get().run_job(job_id).value

    return app


class CeleryQueue:
    """Ingestion queue that sends jobs to Celery workers through the broker."""

    def __init__(self, app: Celery):
        self.app = app

    def validate(self, path: Path) -> None:
        probe(path)

    def enqueue(self, job_id: int) -> None:
        self.app.send_task(INGEST_TASK, args=[job_id])


class InProcessQueue:
    """Ingestion queue that runs jobs one at a time on a background thread of this process."""

    def __init__(self, ingestor: LazyIngestor):
        self.ingestor = ingestor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidseek-ingest")

    def validate(self, path: Path) -> None:
        probe(path)

    def enqueue(self, job_id: int) -> Future:
        return self._pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        try:
            self.ingestor.get().run_job(job_id)
        except Exception:  # already recorded on the job; keep the thread alive for the next one
            log.exception("ingestion job failed", extra={"job": job_id})

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
