"""What the Flask app is given by whoever builds it (the composition root in ``indexer.service``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flask import Flask, current_app

from models.precision import PrecisionChoice
from search.catalog import Catalog
from search.query import QueryService
from search.segment_index import SegmentIndex
from search.settings import Settings


class QueueUnavailable(RuntimeError):
    """The ingestion queue cannot take work right now (e.g. the broker is unreachable)."""


class IngestionQueue(Protocol):
    """Accepts ingestion work. Implemented by the indexer (in-process threads or Celery)."""

    def validate(self, path: Path) -> None:
        """Raise ``search.media_paths.MediaRejected`` if ``path`` is not a usable video."""

    def enqueue(self, job_id: int) -> None:
        """Schedule job ``job_id`` (already in the catalog) to run; raise :class:`QueueUnavailable`
        if it cannot be scheduled."""


@dataclass
class ApiContext:
    settings: Settings
    catalog: Catalog
    index: SegmentIndex
    queries: QueryService
    ingestion: IngestionQueue | None = None
    model_name: str = ""
    precision: PrecisionChoice | None = None  # what the model runs at, and why (healthz, web page)
    banner: str | None = None  # shown on the web page, e.g. when weights are random


EXTENSION = "vidseek"


def install(app: Flask, context: ApiContext) -> None:
    app.extensions[EXTENSION] = context


def ctx() -> ApiContext:
    return current_app.extensions[EXTENSION]
