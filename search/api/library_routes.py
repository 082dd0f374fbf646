"""``/api/library``: what the library holds and what a client may do with it (the web page's landing
view, rerank toggle and upload form read it)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from search.api.context import ctx
from search.media_paths import VIDEO_EXTENSIONS

bp = Blueprint("library", __name__, url_prefix="/api")


@bp.get("/library")
def library_summary():
    c = ctx()
    counts = c.catalog.status_counts()
    reranking = c.queries.reranking
    return jsonify({
        "videos": {"total": sum(counts.values()), **{status.value: n for status, n in counts.items()}},
        "segments_indexed": c.index.refresh().total,  # refreshed when due, as a search would
        "model": c.model_name,
        "default_rerank": reranking.default,
        "rerankers": [{"name": name, "available": reason is None, "reason": reason}
                      for name, reason in reranking.availability().items()],
        "ingestion": c.ingestion is not None,
        "write_key_required": bool(c.settings.api_key),
        "max_upload_mb": c.settings.max_upload_mb,
        "video_extensions": sorted(VIDEO_EXTENSIONS),
    })
