"""``/api/search``: text -> ranked videos with their matched moments (``rerank=none|late|llm``,
``mode=vector|hybrid``).

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
from search.filters import FilterError, SearchFilters, confined_filters
from search.media_paths import PathNotAllowed
from search.query import QueryError
from search.video_metadata import split_tags

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


def float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None


def ids_arg(name: str) -> list[int] | None:
    """``name`` given as comma-separated integers, repeated or not (``video_ids=3,5&video_ids=8``)."""
    raw = [part for value in request.args.getlist(name) for part in value.split(",") if part.strip()]
    if not raw:
        return None
    try:
        return [int(part) for part in raw]
    except ValueError:
        raise ApiError(400, f"{name} must be comma-separated integers") from None


def tags_arg(name: str) -> list[str] | None:
    """``name`` given as comma-separated tags, repeated or not (``tags=beach,family&tags=2024``)."""
    tags = [tag for value in request.args.getlist(name) for tag in split_tags(value)]
    return tags or None


def json_number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ApiError(400, f"{name} must be a number")
    try:
        return None if value is None else float(value)
    except OverflowError:
        raise ApiError(400, f"{name} is out of range") from None


def json_ids(body: dict, name: str) -> list[int] | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
        raise ApiError(400, f"{name} must be a list of integers")
    return value


def json_strings(body: dict, name: str) -> list[str] | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, list) or not all(isinstance(t, str) for t in value)):
        raise ApiError(400, f"{name} must be a list of strings")
    return value


def json_string(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value


def make_filters(video_ids: list[int] | None, min_duration: float | None, max_duration: float | None,
                 folder: str | None, tags: list[str] | None = None, ingested_after: str | None = None,
                 ingested_before: str | None = None) -> SearchFilters:
    """The filters of a request; ``folder`` must lie inside the media roots (400 otherwise)."""
    try:
        return confined_filters(video_ids, min_duration, max_duration, folder, ctx().settings.allowed_media_roots,
                                tags, ingested_after, ingested_before)
    except (FilterError, PathNotAllowed) as exc:
        raise ApiError(400, str(exc)) from None


def run_search(query: str, k: int, rerank: str | None, filters: SearchFilters, min_score: float | None, offset: int,
               mode: str):
    try:
        result = ctx().queries.search(query, k, rerank, filters=filters, min_score=min_score, offset=offset, mode=mode)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(search_json(result))


@bp.get("/search")
def search_videos():
    rerank = request.args.get("rerank") or None  # absent or empty: the configured default
    filters = make_filters(ids_arg("video_ids"), float_arg("min_duration"), float_arg("max_duration"),
                           text_arg("folder") or None, tags_arg("tags"), text_arg("ingested_after") or None,
                           text_arg("ingested_before") or None)
    return run_search(text_arg("q"), int_arg("k", 10), rerank, filters, float_arg("min_score"), int_arg("offset", 0),
                      request.args.get("mode") or "vector")


@bp.post("/search")
def search_videos_json():
    request.max_content_length = MAX_SEARCH_BODY
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"q": "a dog catches a frisbee", "k": 10}')
    query, k, rerank = body.get("q", ""), body.get("k", 10), body.get("rerank")
    offset, folder = body.get("offset", 0), body.get("folder")
    if not isinstance(query, str):
        raise ApiError(400, "q must be a string")
    for name, value in (("k", k), ("offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"{name} must be an integer")
    if rerank is not None and not isinstance(rerank, str):
        raise ApiError(400, "rerank must be a string")
    if folder is not None and not isinstance(folder, str):
        raise ApiError(400, "folder must be a string")
    filters = make_filters(json_ids(body, "video_ids"), json_number(body, "min_duration"),
                           json_number(body, "max_duration"), folder or None, json_strings(body, "tags"),
                           json_string(body, "ingested_after") or None, json_string(body, "ingested_before") or None)
    return run_search(query, k, rerank or None, filters, json_number(body, "min_score"), offset,
                      json_string(body, "mode") or "vector")
