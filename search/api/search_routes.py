"""``GET /api/search``: text -> ranked videos with their matched moments (``rerank=none|late|llm``)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from search.api.context import ctx
from search.api.errors import ApiError
from search.api.serialize import search_json
from search.query import QueryError

bp = Blueprint("search", __name__, url_prefix="/api")
MAX_INT = 2**63 - 1  # query integers are bounded like the database's


def int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if abs(value) > MAX_INT:
        raise ApiError(400, f"{name} is out of range")
    return value


@bp.get("/search")
def search_videos():
    query = request.args.get("q", "")
    rerank = request.args.get("rerank") or None  # absent or empty: the configured default
    try:
        result = ctx().queries.search(query, int_arg("k", 10), rerank)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(search_json(result))
