"""``/api/search``: a query -> ranked videos with their matched moments (``rerank=none|late|llm``,
``mode=vector|hybrid``).

``GET`` takes a text query and its options in the query string. ``POST`` takes them as a JSON object
(for queries whose URL would pass a server's request-line limit -- gunicorn's is 4 KB, about 450 CJK
characters once percent-encoded), or ``like`` instead of ``q`` to search with a stored moment's
embedding ("more moments like this"); or, as ``multipart/form-data``, an example picture ``image``,
with an optional ``q`` blended in by ``image_weight``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from flask import Blueprint, jsonify, request
from werkzeug.datastructures import MultiDict

from search.api.context import ctx
from search.api.errors import ApiError
from search.api.serialize import search_json
from search.filters import FilterError, SearchFilters, confined_filters
from search.media_paths import PathNotAllowed
from search.query import ExampleNotFound, QueryError, QueryVector, SearchOptions
from search.query_image import ImageRejected, decode_image
from search.video_metadata import split_tags

bp = Blueprint("search", __name__, url_prefix="/api")
MAX_INT = 2**63 - 1  # query integers are bounded like the database's
MAX_SEARCH_BODY = 64 * 1024  # bytes of a POST search body; a query is at most 1000 characters
DEFAULT_IMAGE_WEIGHT = 0.5

def int_arg(name: str, default: int, values: MultiDict | None = None) -> int:
    """Integer argument ``name`` of the query string (or of the form ``values``)."""
    raw = (request.args if values is None else values).get(name)
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


def float_arg(name: str, values: MultiDict | None = None) -> float | None:
    raw = (request.args if values is None else values).get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None


def ids_arg(name: str, values: MultiDict | None = None) -> list[int] | None:
    """``name`` given as comma-separated integers, repeated or not (``video_ids=3,5&video_ids=8``)."""
    raw = [part for value in (request.args if values is None else values).getlist(name) for part in value.split(",")
           if part.strip()]
    if not raw:
        return None
    try:
        return [int(part) for part in raw]
    except ValueError:
        raise ApiError(400, f"{name} must be comma-separated integers") from None


def tags_arg(name: str, values: MultiDict | None = None) -> list[str] | None:
    """``name`` given as comma-separated tags, repeated or not (``tags=beach,family&tags=2024``)."""
    tags = [tag for value in (request.args if values is None else values).getlist(name) for tag in split_tags(value)]
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


def search_options(k: int, rerank: str | None, filters: SearchFilters, min_score: float | None,
                   offset: int, mode: str) -> SearchOptions:
    try:
        return SearchOptions(k, rerank, filters, min_score, offset, mode)
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None


def args_options(values: MultiDict, text: Callable[[str], str]) -> SearchOptions:
    """The options of a search given as query-string or form ``values``; ``text(name)`` reads a text
    argument (the query string's checks its UTF-8)."""
    filters = make_filters(ids_arg("video_ids", values), float_arg("min_duration", values),
                           float_arg("max_duration", values), text("folder") or None, tags_arg("tags", values),
                           text("ingested_after") or None, text("ingested_before") or None)
    rerank = values.get("rerank") or None  # absent or empty: the configured default
    return search_options(int_arg("k", 10, values), rerank, filters, float_arg("min_score", values),
                          int_arg("offset", 0, values), values.get("mode") or "vector")


def answer(make_query: Callable[[], QueryVector], options: SearchOptions):
    """Make the query (encode the text or picture, look up the moment), search, and reply; the
    options were checked before, so a bad one costs no encoding."""
    queries = ctx().queries
    try:
        result = queries.search_vector(make_query(), options)
    except ImageRejected as exc:
        raise ApiError(exc.status, str(exc)) from None
    except ExampleNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except QueryError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(search_json(result))


def like_example(like: object) -> tuple[int | None, int | None, float | None]:
    """``{"segment_id": N}`` or ``{"video_id": V, "t": seconds}`` -> (segment id, video id, t)."""
    shapes = 'like must be {"segment_id": N} or {"video_id": V, "t": seconds}'
    if not isinstance(like, dict) or set(like) not in ({"segment_id"}, {"video_id", "t"}):
        raise ApiError(400, shapes)
    for name in ("segment_id", "video_id"):
        value = like.get(name)
        if name in like and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT):
            raise ApiError(400, f"like.{name} must be an integer between 0 and {MAX_INT}")
    t = json_number(like, "t")
    return like.get("segment_id"), like.get("video_id"), t


@bp.get("/search")
def search_videos():
    options = args_options(request.args, text_arg)
    text = text_arg("q")
    return answer(lambda: ctx().queries.text_query(text), options)


@bp.post("/search")
def search_videos_post():
    if request.mimetype == "multipart/form-data":
        return search_by_image()
    request.max_content_length = MAX_SEARCH_BODY
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"q": "a dog catches a frisbee", "k": 10}')
    query, k, rerank = body.get("q", ""), body.get("k", 10), body.get("rerank")
    offset, folder, like = body.get("offset", 0), body.get("folder"), body.get("like")
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
    options = search_options(k, rerank or None, filters, json_number(body, "min_score"), offset,
                             json_string(body, "mode") or "vector")
    if like is None:
        return answer(lambda: ctx().queries.text_query(query), options)
    if query.strip():
        raise ApiError(400, "give q or like, not both")
    segment_id, video_id, t = like_example(like)
    return answer(lambda: ctx().queries.like_query(segment_id, video_id, t), options)


def search_by_image():
    """``multipart/form-data``: the picture ``image`` (JPEG, PNG or WebP, at most
    ``VIDSEEK_MAX_IMAGE_BYTES``), optional text ``q`` and ``image_weight``, and the options of GET."""
    limit = ctx().settings.max_image_bytes
    request.max_content_length = limit + MAX_SEARCH_BODY
    form = request.form
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "a multipart search needs an 'image' file field (search by text with GET or a JSON body)")
    weight = float_arg("image_weight", form)
    options = args_options(form, lambda name: form.get(name, ""))
    data = upload.stream.read(limit + 1)
    text = form.get("q", "").strip() or None

    def query() -> QueryVector:
        image_weight = DEFAULT_IMAGE_WEIGHT if weight is None else weight
        return ctx().queries.image_query(decode_image(data, limit), text, image_weight)

    return answer(query, options)
