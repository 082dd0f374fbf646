"""Ingestion jobs and their leases: which worker runs a job, renewed by its heartbeat."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from search.store import Store, aware, count_by_status
from search.tables import Job, Status, Video, utcnow


class JobLeased(RuntimeError):
    """The job is running on another worker whose heartbeat is fresh."""

    def __init__(self, job_id: int, worker: str | None):
        super().__init__(f"job {job_id} is running on {worker}")
        self.job_id, self.worker = job_id, worker


@dataclass(frozen=True)
class StaleJob:
    """A running job whose worker stopped sending heartbeats."""

    id: int
    video_id: int | None
    worker: str | None
    attempts: int


@dataclass(frozen=True)
class ClaimHolder:
    """The running job that has claimed a video's content (it is encoding it)."""

    job_id: int
    worker: str | None


def _set(s: Session, job_id: int, values: dict[str, Any]) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(**values))


class JobStore(Store):
    """Jobs: created by the API/CLI, leased and updated by the worker running them."""

    def create_job(self, path: Path, video_id: int | None = None, status: Status = Status.queued) -> Job:
        with self.session() as s:
            job = Job(path=str(path), video_id=video_id, status=status)
            if status is Status.done:
                job.progress, job.finished_at, job.message = 1.0, utcnow(), "already indexed"
            s.add(job)
            s.flush()
            return job

    def get_job(self, job_id: int) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def job_status_counts(self) -> dict[Status, int]:
        """How many jobs are in each status (every status present, zero included)."""
        with self.session() as s:
            return count_by_status(s, Job)

    def claim_video(
        self, job_id: int, video_id: int, stale_before: datetime, holder_is_dead: Callable[[str | None], bool]
    ) -> ClaimHolder | None:
        """Attach video ``video_id`` (a content hash) to running job ``job_id`` unless another running
        job already has it and is alive; returns that job then (the caller waits for it), else None.

        A job counts as alive while its heartbeat is newer than ``stale_before`` and
        ``holder_is_dead(worker)`` is false. Concurrent claims of one video take turns on its row.
        """
        with self.session() as s:
            # A write first: PostgreSQL locks the row, SQLite the database, until this transaction ends.
            s.execute(update(Video).where(Video.id == video_id).values(status=Video.status))
            others = s.execute(
                select(Job.id, Job.worker, Job.heartbeat_at, Job.started_at)
                .where(Job.video_id == video_id, Job.status == Status.running, Job.id != job_id)
                .order_by(Job.id)
            ).all()
            for other in others:
                beat = other.heartbeat_at or other.started_at
                if beat is not None and aware(beat) >= stale_before and not holder_is_dead(other.worker):
                    return ClaimHolder(other.id, other.worker)
            _set(s, job_id, {"video_id": video_id})
            return None

    def attach_video(self, job_id: int, video_id: int) -> None:
        """Record which video the job's file turned out to be (known once it is hashed)."""
        with self.session() as s:
            _set(s, job_id, {"video_id": video_id})

    def set_job_progress(self, job_id: int, fraction: float, message: str | None = None) -> None:
        """Record how far the job got (``fraction`` in [0, 1]) and, if given, what it is doing."""
        values: dict[str, Any] = {"progress": round(min(max(fraction, 0.0), 1.0), 4)}
        if message is not None:
            values["message"] = message
        with self.session() as s:
            _set(s, job_id, values)

    def set_job_precision(self, job_id: int, precision: str) -> None:
        """Record the float type (``fp32`` / ``bf16`` / ``fp16``) the job's encoder runs at."""
        with self.session() as s:
            _set(s, job_id, {"precision": precision})

    def start_job(
        self, job_id: int, worker: str = "local", stale_before: datetime | None = None, dead_holder: str | None = None
    ) -> Job | None:
        """Lease job ``job_id`` to ``worker``: mark it running, count the attempt, stamp a heartbeat.

        Returns None when there is nothing to run (no such job, or it is done or failed: both
        final). A job running on another worker is taken over only if its heartbeat is older
        than ``stale_before`` (that worker died) or its worker is ``dead_holder`` (the caller
        proved that process gone); otherwise :class:`JobLeased` is raised.
        """
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status in (Status.done, Status.failed):
                return None
            if job.status is Status.running and job.worker != worker and stale_before is not None:
                beat = job.heartbeat_at or job.started_at
                if beat is not None and aware(beat) >= stale_before and (dead_holder is None or job.worker != dead_holder):
                    raise JobLeased(job_id, job.worker)
            now = utcnow()
            job.status, job.started_at, job.error, job.worker, job.heartbeat_at = Status.running, now, None, worker, now
            job.attempts += 1
            return job

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Renew ``worker``'s lease on a running job; False when the lease was lost (the job was
        re-queued or taken over, so the worker should stop)."""
        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.status == Status.running)
                .values(heartbeat_at=utcnow())
            )
            return result.rowcount == 1

    def requeue_job(self, job_id: int, message: str) -> None:
        """Put a job back in the queue (lease cleared) to be retried, saying why."""
        with self.session() as s:
            _set(s, job_id, {"status": Status.queued, "worker": None, "heartbeat_at": None, "message": message})

    def stale_jobs(self, stale_before: datetime) -> list[StaleJob]:
        """Running jobs whose last heartbeat is older than ``stale_before``."""
        with self.session() as s:
            rows = s.execute(
                select(Job.id, Job.video_id, Job.worker, Job.attempts).where(
                    Job.status == Status.running,
                    or_(Job.heartbeat_at < stale_before, Job.heartbeat_at.is_(None) & (Job.started_at < stale_before)),
                )
            ).all()
        return [StaleJob(r.id, r.video_id, r.worker, r.attempts) for r in rows]

    def release_stale_job(self, job: StaleJob, stale_before: datetime, status: Status, reason: str) -> bool:
        """Move a stale running job to ``status`` (queued to run again, or failed with ``reason``)
        unless it changed since it was found stale (a heartbeat arrived, another reaper got it).
        Returns whether this call released it."""
        values: dict[str, Any] = {"status": status, "worker": None, "heartbeat_at": None}
        if status is Status.failed:
            values.update(error=reason, finished_at=utcnow())
        else:
            values.update(message=reason)
        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == Status.running, Job.attempts == job.attempts,
                       or_(Job.heartbeat_at < stale_before, Job.heartbeat_at.is_(None)))
                .values(**values)
            )
            if result.rowcount == 1 and status is Status.failed and job.video_id is not None:
                s.execute(update(Video).where(Video.id == job.video_id).values(status=Status.failed, error=reason))
            return result.rowcount == 1

    def finish_job(self, job_id: int, status: Status, message: str | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "message": message, "error": error}
        if status is Status.done:
            values["progress"] = 1.0
        with self.session() as s:
            _set(s, job_id, values)
