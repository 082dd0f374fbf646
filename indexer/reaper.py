"""``vidseek beat``: finds jobs whose worker died and gets them finished by another worker.

A running job's worker renews its lease every ``VIDSEEK_HEARTBEAT_SECONDS`` (``indexer.leases``).
When the lease is older than ``VIDSEEK_JOB_STALE_SECONDS``, the worker is gone (SIGKILL,
container or machine lost, network cut): the job is sent to the queue again, or, when workers
have died ``VIDSEEK_JOB_MAX_ATTEMPTS`` times on it (a video that crashes the decoder or
exhausts memory), failed with that reason so that it cannot take down worker after worker.

Every step is safe to repeat and to run in several beat processes at once: the message is sent
before the job is released (a lost send leaves the job stale, to be found again), the release
is a conditional update, and a duplicate message finds the job done or leased and does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from indexer.errors import TRANSIENT_ERRORS
from search.ingestion import QueueUnavailable
from search.catalog import Catalog
from search.settings import Settings
from search.tables import Status, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def reap_stale_jobs(catalog: Catalog, settings: Settings, enqueue: Callable[[int], None]) -> ReapReport:
    """Re-queue (through ``enqueue``, e.g. ``CeleryQueue.enqueue``) or fail every running job
    whose heartbeat went stale."""
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_seconds)
    report = ReapReport()
    for job in catalog.stale_jobs(stale_before):
        if job.attempts >= settings.job_max_attempts:
            reason = (f"gave up after {job.attempts} attempts: the worker running it stopped responding each "
                      f"time (killed, out of memory, or its machine went away; last: {job.worker})")
            if catalog.release_stale_job(job, stale_before, Status.failed, reason):
                report.failed.append(job.id)
                log.error("job failed: its workers kept dying", extra={"job": job.id, "attempts": job.attempts})
            continue
        enqueue(job.id)
        report.requeued.append(job.id)
        log.warning("stale job re-queued", extra={"job": job.id, "dead_worker": job.worker})
        # Shown until a worker takes the job; a no-op if one already has (or the old one came back).
        note = f"re-queued: worker {job.worker} stopped responding (attempt {job.attempts} of {settings.job_max_attempts})"
        catalog.release_stale_job(job, stale_before, Status.queued, note)
    return report


def run_beat(catalog: Catalog, settings: Settings, enqueue: Callable[[int], None], stop: threading.Event) -> None:
    """Reap every ``reap_interval_seconds`` until ``stop`` is set; database or broker outages are
    logged and waited out."""
    log.info("beat started", extra={"interval_s": settings.reap_interval_seconds, "stale_s": settings.job_stale_seconds})
    while not stop.is_set():
        try:
            reap_stale_jobs(catalog, settings, enqueue)
        except (*TRANSIENT_ERRORS, QueueUnavailable) as exc:
            log.warning("reaping failed; trying again", extra={"error": f"{type(exc).__name__}: {exc}"})
        stop.wait(settings.reap_interval_seconds)
