"""Errors that mean "try again later", shared by the pipeline, the Celery task and the reaper."""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

# The database or the network briefly unreachable, not "this video is bad": a job hitting one is
# retried with backoff, never failed for it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, ConnectionError, TimeoutError)
