"""Metrics shared by the processes of one service: gunicorn's workers under ``vidseek serve``, a
Celery worker's pool under ``vidseek worker --metrics-port``.

prometheus_client's multiprocess mode: every process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR``, and a scrape adds them up (``search.metrics_exposition``). The command
that forks the processes points the variable at a fresh folder for this run -- counters from an
earlier run must not be added in -- before prometheus_client is first imported (it decides then),
and removes the folder when the run ends. Nothing here imports prometheus_client at module level.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsAlreadyStarted(RuntimeError):
    """prometheus_client was imported before the shared folder was set: processes would not share metrics."""


@contextmanager
def shared_metrics_folder() -> Iterator[Path]:
    """A fresh folder (under ``TMPDIR``) that this process and the processes it forks record metrics
    to, for the duration of the block. Only the process that made it removes it: a forked child
    leaving the block (gunicorn's workers exit through ``sys.exit``) must not take it away from the others."""
    if "prometheus_client" in sys.modules:
        raise MetricsAlreadyStarted(f"prometheus_client was imported before {MULTIPROCESS_ENV} was set")
    owner = os.getpid()
    folder = Path(tempfile.mkdtemp(prefix="vidseek-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)
    try:
        yield folder
    finally:
        if os.getpid() == owner:
            os.environ.pop(MULTIPROCESS_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)


def forget_process(pid: int) -> None:
    """Drop the live gauges of process ``pid``, which exited (gunicorn's ``child_exit``, Celery's
    ``worker_process_shutdown``); its counters and histograms stay in the totals."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)
