"""Job leases: which worker runs a job, renewed by a heartbeat while it runs.

A worker leases a job when it starts it (``Catalog.start_job``) and renews the lease every
``heartbeat_seconds`` from a background thread, so that the lease proves the process is alive
however long one video takes. A worker that is killed stops renewing; once its heartbeat is
older than ``job_stale_seconds``, ``vidseek beat`` re-queues the job (``indexer.reaper``) and
another worker takes it over. If a worker finds its lease gone (it was too slow to renew and
the job was taken over), it stops without writing anything.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from types import TracebackType

from search.catalog import Catalog

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The job was re-queued or taken over by another worker while this one ran it."""


def worker_identity(node: str | None = None) -> str:
    """``<node>/<pid>``: the Celery node name (default: the host name) and this process's id."""
    return f"{node or socket.gethostname()}/{os.getpid()}"


class JobHeartbeat:
    """Renews ``worker``'s lease on job ``job_id`` every ``interval`` seconds while in its ``with``
    block. Database errors are logged and retried at the next beat (a short outage must not
    cost the lease); a refused renewal marks the lease lost, which :meth:`check` raises."""

    def __init__(self, catalog: Catalog, job_id: int, worker: str, interval: float):
        self.catalog, self.job_id, self.worker, self.interval = catalog, job_id, worker, interval
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> "JobHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another worker has the job now."""
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id} was taken over while {self.worker} ran it")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                renewed = self.catalog.heartbeat(self.job_id, self.worker)
            except Exception as exc:  # database briefly down: try again at the next beat
                log.warning("heartbeat failed", extra={"job": self.job_id, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if not renewed:
                log.warning("job lease lost", extra={"job": self.job_id, "worker": self.worker})
                self._lost.set()
                return
