"""Job leases: which worker runs a job, renewed by a heartbeat while it runs.

A worker leases a job when it starts it (``Catalog.start_job``) and renews the lease every
``heartbeat_seconds`` from a background thread, so that the lease proves the process is alive
however long one video takes. A worker that is killed stops renewing; once its heartbeat is
older than ``job_stale_seconds``, ``vidseek beat`` re-queues the job (``indexer.reaper``) and
another worker takes it over. If a worker finds its lease gone (it was too slow to renew and
the job was taken over), it stops without writing anything.

The lease names its holder precisely (:class:`LeaseHolder`: host, boot, PID namespace, pid and
the process's start time), so that a worker on the same machine can prove the holder dead --
its pid gone, or reused by a process that started later -- and take the job over at once
instead of waiting for the heartbeat to go stale (:func:`holder_is_dead`): the case of a Celery
pool process killed mid-job, whose task the broker redelivers within a second.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from search.catalog import Catalog

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The job was re-queued or taken over by another worker while this one ran it."""


_HOLDER = re.compile(r"^(?P<node>.+)/(?P<pid>\d+) on (?P<machine>\S+) since (?P<started>\d+)$")


@dataclass(frozen=True)
class LeaseHolder:
    """A process, named so that another process on its machine can tell whether it still runs.

    ``machine`` is ``<host>:<boot id>:<pid namespace>``: pids mean the same process only within
    one boot of one kernel's PID namespace (containers sharing a host name have their own);
    ``started`` is the process's start time in clock ticks since boot (``/proc/<pid>/stat``), so
    a pid reused by a later process does not pass for the holder.
    """

    node: str
    pid: int
    machine: str
    started: int

    def __str__(self) -> str:
        return f"{self.node}/{self.pid} on {self.machine} since {self.started}"

    @classmethod
    def parse(cls, text: str | None) -> "LeaseHolder | None":
        """The holder a lease names, or None for names of another form (nothing can be proved of them)."""
        match = _HOLDER.match(text or "")
        if match is None:
            return None
        return cls(match["node"], int(match["pid"]), match["machine"], int(match["started"]))


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if there is no such process
    (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; starttime is field 22.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def this_machine() -> str | None:
    """``<host>:<boot id>:<pid namespace inode>``, or None where the kernel does not say (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return None
    return f"{socket.gethostname()}:{boot}:{namespace}"


def worker_identity(node: str | None = None) -> str:
    """The lease holder name of this process: ``<node>/<pid> on <machine> since <start>`` (node: the
    Celery node name, default the host name), or ``<node>/<pid>`` where the machine cannot be named."""
    node = node or socket.gethostname()
    machine, started = this_machine(), process_start_ticks(os.getpid())
    if machine is None or started is None:
        return f"{node}/{os.getpid()}"
    return str(LeaseHolder(node, os.getpid(), machine, started))


def holder_is_dead(holder_name: str | None) -> bool:
    """True only when the lease's holder provably no longer runs: it ran on this machine (same
    host, boot and PID namespace) and its pid is gone or now belongs to a process that started at
    another time. A holder elsewhere, or named in another form, is never declared dead here (its
    heartbeat going stale tells)."""
    holder = LeaseHolder.parse(holder_name)
    if holder is None or holder.machine != this_machine():
        return False
    return process_start_ticks(holder.pid) != holder.started


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
