"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis): valid
and invalid requests to every operation; no answer is a server error, and every answer has a
status code, content type and body that the document allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from indexer.service import build_runtime
from search.api import create_app
from search.openapi import openapi_document
from search.settings import Settings

KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Every operation but the document's own route, which schemathesis leaves out of the schema it serves.
OPERATIONS = [label for result in schemathesis.openapi.from_dict(openapi_document("0")).get_all_operations()
              if (label := result.ok().label) != "GET /openapi.json"]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path, tiny_checkpoint: Path, tiny_config_dir: Path) -> Flask:
    """One app for every operation, with a video indexed so that existing ids are found too."""
    folder = tmp_path_factory.mktemp("fuzz")
    settings = Settings(data_dir=folder / "data", media_roots=(samples_dir,), model="vidseek-tiny-ViT",
                        pretrained=str(tiny_checkpoint), model_config_dir=tiny_config_dir, device="cpu",
                        index_refresh_seconds=0.0, log_format="text", api_key=KEY, max_upload_mb=1)
    runtime = build_runtime(settings)
    job = runtime.catalog.create_job(samples_dir / "red_ball.mp4")
    runtime.ingestor().run_job(job.id)
    return create_app(runtime.api_context())


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_input_makes_the_api_fail(app: Flask, label: str) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @hypothesis_settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

    fuzz()
