"""``/healthz`` and ``/openapi.json``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask import Blueprint, jsonify
from sqlalchemy import text

from search.api.context import ctx
from search.api.serialize import reindex_json
from search.openapi import openapi_document

bp = Blueprint("meta", __name__)


def package_version() -> str:
    try:
        return version("vidseek")
    except PackageNotFoundError:
        return "0.0.0+source"


@bp.get("/healthz")
def health():
    c = ctx()
    try:
        with c.catalog.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # reported, not raised: health checks must answer
        database = f"error: {type(exc).__name__}"
    age = c.index.refresh_age()
    body = {"status": "ok" if database == "ok" else "degraded", "database": database,
            "index_segments": len(c.index), "index_refreshed_seconds_ago": round(age, 3) if age is not None else None,
            "index": c.index.structure, "index_lists": c.index.index.list_storage, "model": c.model_name}
    if c.precision is not None:
        body.update(precision=c.precision.precision, precision_reason=c.precision.reason)
    if c.text_runtime is not None:
        body.update(text_runtime=c.text_runtime.runtime, text_runtime_reason=c.text_runtime.reason)
    if database == "ok":
        body.update(space=c.queries.space.key, reindex=reindex_json(c.catalog))
    return jsonify(body), 200 if database == "ok" else 503


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(package_version()))
