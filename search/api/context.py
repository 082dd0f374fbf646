"""What the Flask app is given by whoever builds it (the composition root in ``indexer.service``)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from models.precision import PrecisionChoice
from models.text_onnx import TextRuntimeChoice
from search.catalog import Catalog
from search.ingestion import IngestionQueue
from search.query import QueryService
from search.segment_index import SegmentIndex
from search.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    catalog: Catalog
    index: SegmentIndex
    queries: QueryService
    ingestion: IngestionQueue | None = None
    model_name: str = ""
    precision: PrecisionChoice | None = None  # what the model runs at, and why (healthz, web page)
    text_runtime: TextRuntimeChoice | None = None  # where query texts are encoded, and why (healthz, web page)
    banner: str | None = None  # shown on the web page, e.g. when weights are random


EXTENSION = "vidseek"


def install(app: Flask, context: ApiContext) -> None:
    app.extensions[EXTENSION] = context


def ctx() -> ApiContext:
    return current_app.extensions[EXTENSION]
