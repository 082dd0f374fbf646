"""Running ingestion jobs: a Celery task for workers, or an in-process queue (embedded default).

Celery: ``vidseek worker`` consumes ``vidseek.ingest_video`` tasks from ``VIDSEEK_BROKER_URL``
(Redis in production). The job itself is idempotent (see ``indexer.pipeline``); how each
failure is survived:

- *Bad video* (corrupt, not a video, outside the media roots): the job fails at once with the
  reason; the task is not retried.
- *Transient error* (database or network briefly down): the job goes back to ``queued`` with a
  note, and the task is retried with exponential backoff (:func:`backoff_seconds`), up to
  ``VIDSEEK_TASK_MAX_RETRIES`` times, then the job fails saying why.
- *A pool process dies* (out of memory, segfault): tasks are acknowledged late and rejected
  when their worker process is lost, so the broker hands the message to another worker at once;
  that worker proves the old lease's holder dead (``indexer.leases.holder_is_dead``: same
  machine, pid gone or reused) and takes the job over without waiting for its lease to go stale.
- *A whole worker is killed* (SIGKILL, container or machine gone): its job's heartbeat stops;
  ``vidseek beat`` re-queues the job once the heartbeat is ``VIDSEEK_JOB_STALE_SECONDS`` old
  (:mod:`indexer.reaper`). The unacknowledged message also comes back by itself after the
  broker's ``VIDSEEK_VISIBILITY_TIMEOUT``; a job already done or running elsewhere is skipped.

In-process (no broker configured): jobs run on one background thread of the current process.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from celery import Celery, Task
from kombu.exceptions import OperationalError as BrokerError

from indexer.decode import probe
from indexer.leases import worker_identity
from indexer.errors import TRANSIENT_ERRORS
from indexer.pipeline import VideoIngestor
from search.ingestion import QueueUnavailable
from search.catalog import Catalog, JobLeased
from search.settings import Settings
from search.tables import Status

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


def backoff_seconds(retries: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Delay before retry number ``retries + 1``: ``d = min(cap, base * 2**retries)``, drawn
    uniformly from ``[d/2, d]`` so that workers hit by the same outage do not retry in step."""
    delay = min(cap, base * 2**retries)
    return delay / 2 + random.random() * delay / 2


def make_celery(settings: Settings, ingestor: LazyIngestor | None = None) -> Celery:
    """The Celery app for ``settings.broker_url`` with the ``ingest_video`` task registered.

    ``ingestor`` is only needed in worker processes; producers (API, CLI, beat) just send tasks.
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_hijack_root_logger=False,
    )

    # shared=False: the task belongs to this app only. Celery's default registers it with every
    # app finalized later in the process, which could hand a worker another app's (ingestor-less) task.
    @app.task(name=INGEST_TASK, bind=True, max_retries=settings.task_max_retries, shared=False)
    def ingest_video(task: Task, job_id: int) -> str:
        if ingestor is None:
            raise RuntimeError("this Celery app was built without an ingestor (producer only)")
        ingest = ingestor.get()
        try:
            return ingest.run_job(job_id, worker=worker_identity(task.request.hostname)).value
        except JobLeased as exc:  # a duplicate message: the job's live worker finishes it
            log.info("job is running elsewhere", extra={"job": job_id, "worker": exc.worker})
            return Status.running.value
        except TRANSIENT_ERRORS as exc:
            return retry_after_transient_error(task, ingest.catalog, job_id, exc)

    return app


def retry_after_transient_error(task: Task, catalog: Catalog, job_id: int, exc: BaseException) -> str:
    """Re-queue the job and retry the task with backoff, or fail the job once retries are spent.

    The job is updated on a best-effort basis: the database may be the thing that is down
    (then the lease simply goes stale and ``vidseek beat`` re-queues the job later).
    """
    reason = f"{type(exc).__name__}: {exc}".strip()
    retries = task.request.retries
    if retries >= task.max_retries:
        log.error("job failed after retries", extra={"job": job_id, "retries": retries, "error": reason})
        _record(lambda: catalog.finish_job(job_id, Status.failed, error=f"gave up after {retries} retries: {reason}"))
        return Status.failed.value
    delay = backoff_seconds(retries)
    log.warning("transient error, retrying", extra={"job": job_id, "retry": retries + 1, "in_s": round(delay, 1), "error": reason})
    _record(lambda: catalog.requeue_job(job_id, f"retry {retries + 1} of {task.max_retries} in {delay:.0f}s after: {reason}"))
    raise task.retry(countdown=delay, exc=exc)


def _record(write: Callable[[], None]) -> None:
    try:
        write()
    except TRANSIENT_ERRORS as exc:
        log.warning("could not record the job's state", extra={"error": f"{type(exc).__name__}: {exc}"})


class CeleryQueue:
    """Ingestion queue that sends jobs to Celery workers through the broker."""

    def __init__(self, app: Celery):
        self.app = app

    def validate(self, path: Path) -> None:
        probe(path)

    def enqueue(self, job_id: int) -> None:
        """Send the job's task; :class:`QueueUnavailable` when the broker cannot be reached
        (after kombu's own short publish retries)."""
        try:
            self.app.send_task(INGEST_TASK, args=[job_id])
        except BrokerError as exc:
            raise QueueUnavailable(f"the task broker is unreachable: {exc}") from exc


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
