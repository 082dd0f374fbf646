"""``/api/search``: text -> ranked videos with their matched moments (``rerank=none|late|llm``).

``GET`` takes the arguments in the query string; ``POST`` takes the same ones as a JSON object, for
queries whose URL would pass a server's request-line limit (gunicorn's is 4 KB, about 450 CJK
characters once percent-encoded).
"""

from __future__ import annotations

import urllib.parse

from flask import Blueprint, jsonify, request

from search.api.context import ctx
from search.api.errors import ApiError
from search.api.serialize import search_json
from search.query import QueryError

bp = Blueprint("search", __name__, url_prefix="/api")
MAX_INT = 2**63 - 1  # query integers are bounded like the database's
MAX_SEARCH_BODY = 64 * 1024  # bytes of a POST search body; a query is at most 1000 characters


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


def text_arg(name: str) -> str:
    """The query-string argument ``name`` as text. Bytes that are not UTF-8 (``%FF%FE``) are refused
    with 400: decoded leniently they would become U+FFFD and be searched as text nobody typed."""
    for pair in request.query_string.split(b"&"):
        key, _, value = pair.partition(b"=")
        if urllib.parse.unquote_to_bytes(key.replace(b"+", b" ")) == name.encode():
            try:
                urllib.parse.unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"{name} is not valid UTF-8 text (percent-encode its UTF-8 bytes)") from None
    return request.args.get(name, "")


def run_search(query: str, k: int, rerank: str | None):
    try:
        result = ctx().queries.search(query, k, rerank)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(search_json(result))


@bp.get("/search")
def search_videos():
    rerank = request.args.get("rerank") or None  # absent or empty: the configured default
    return run_search(text_arg("q"), int_arg("k", 10), rerank)


@bp.post("/search")
def search_videos_json():
    request.max_content_length = MAX_SEARCH_BODY
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"q": "a dog catches a frisbee", "k": 10}')
    query, k, rerank = body.get("q", ""), body.get("k", 10), body.get("rerank")
    if not isinstance(query, str):
        raise ApiError(400, "q must be a string")
    if not isinstance(k, int) or isinstance(k, bool):
        raise ApiError(400, "k must be an integer")
    if rerank is not None and not isinstance(rerank, str):
        raise ApiError(400, "rerank must be a string")
    return run_search(query, k, rerank or None)
