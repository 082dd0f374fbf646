"""The ingestion queue as the search layer sees it: the protocol the indexer implements and the error it
raises when it cannot take work. No web imports, so the Celery worker (``indexer.tasks``) can use it
without loading Flask."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class QueueUnavailable(RuntimeError):
    """The ingestion queue cannot take work right now (e.g. the broker is unreachable)."""


class IngestionQueue(Protocol):
    """Accepts ingestion work. Implemented by the indexer (in-process threads or Celery)."""

    def validate(self, path: Path) -> None:
        """Raise ``search.media_paths.MediaRejected`` if ``path`` is not a usable video."""

    def enqueue(self, job_id: int) -> None:
        """Schedule job ``job_id`` (already in the catalog) to run; raise :class:`QueueUnavailable`
        if it cannot be scheduled."""
