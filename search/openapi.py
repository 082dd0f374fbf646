"""The OpenAPI 3.1 document of the REST API, served at ``/openapi.json``.

Kept next to the routes by a test that compares it with the Flask URL map. Its ~400 lines are the
spec as data (one dict per route and schema), kept in one file so that it reads as one document.
"""

from __future__ import annotations

from typing import Any

from search.filters import MAX_FILTER_IDS, MAX_OFFSET
from search.hybrid import HYBRID_DEPTH, RRF_K, SEARCH_MODES, SIGNALS
from search.query import MAX_K, MAX_QUERY_CHARS
from search.settings import RERANKERS
from search.tables import MAX_TAG_CHARS
from search.video_metadata import MAX_TAGS, MAX_TITLE_CHARS


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}


_OFFSET = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0,
           "description": "skip the best OFFSET videos (paging: the next page starts at offset + k)"}
_MIN_SCORE = {"minimum": -1, "maximum": 1,
              "description": "drop matched moments whose first-stage (cosine) score is below it; no hits is still 200"}
_VIDEO_ID = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_DURATION = {"minimum": 0, "description": "seconds of the whole video"}
_FOLDER = {"description": "search only videos whose file lies under this folder (inside the media roots)"}
_TAG = {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS}
_TAGS = {"minItems": 1, "maxItems": MAX_TAGS,
         "description": "search only videos that have every one of these tags (normalised as stored: lower case)"}
_INSTANT = {"format": "date-time",
            "description": "ISO 8601 date or date and time; without an offset it is UTC"}
_INGESTED = {
    "ingested_after": "search only videos added to the catalog at or after this instant",
    "ingested_before": "search only videos added to the catalog before this instant",
}
_MODE = {"enum": list(SEARCH_MODES), "default": "vector",
         "description": f"hybrid: also rank videos by the query's words in their titles, file names and tags "
                        f"(the database's full-text search) and fuse both rankings by reciprocal rank fusion "
                        f"(k={RRF_K}, the best {HYBRID_DEPTH} of each)"}


def _filter_params() -> list[dict[str, Any]]:
    """The query-string parameters of GET /api/search that narrow and page the results."""
    return [
        {"name": "offset", "in": "query", "required": False, "schema": _OFFSET},
        {"name": "min_score", "in": "query", "required": False, "schema": {"type": "number", **_MIN_SCORE}},
        {"name": "video_ids", "in": "query", "required": False, "style": "form", "explode": False,
         "schema": {"type": "array", "items": _VIDEO_ID, "minItems": 1, "maxItems": MAX_FILTER_IDS},
         "description": "search only these videos (comma-separated)"},
        {"name": "min_duration", "in": "query", "required": False, "schema": {"type": "number", **_DURATION}},
        {"name": "max_duration", "in": "query", "required": False, "schema": {"type": "number", **_DURATION}},
        {"name": "folder", "in": "query", "required": False, "schema": {"type": "string", **_FOLDER}},
        {"name": "tags", "in": "query", "required": False, "style": "form", "explode": False,
         "schema": {"type": "array", "items": {**_TAG, "pattern": "^[^,]+$"}, **_TAGS}},
        *({"name": name, "in": "query", "required": False, "schema": {"type": "string", **_INSTANT},
           "description": description} for name, description in _INGESTED.items()),
    ]


_MOMENT = {
    "type": "object",
    "required": ["segment_id", "start", "end", "score"],
    "properties": {
        "segment_id": {"type": "integer"},
        "start": {"type": "number", "description": "seconds"},
        "end": {"type": "number", "description": "seconds"},
        "score": {"type": "number", "description": "cosine similarity of the query and the segment"},
        "thumbnail_url": {"type": ["string", "null"]},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            }
        },
    },
    "Moment": _MOMENT,
    "SearchRequest": {
        "type": "object",
        "description": "q (text) or like (a stored moment), not both",
        "anyOf": [{"required": ["q"]}, {"required": ["like"]}],
        "properties": {
            "q": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
            "like": {"$ref": "#/components/schemas/Like"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "rerank": {"type": ["string", "null"], "enum": [*RERANKERS, None],
                       "description": "as in GET /api/search; null or absent: the configured default"},
            "offset": _OFFSET,
            "min_score": {"type": ["number", "null"], **_MIN_SCORE},
            "video_ids": {"type": ["array", "null"], "items": _VIDEO_ID, "minItems": 1, "maxItems": MAX_FILTER_IDS,
                          "description": "search only these videos"},
            "min_duration": {"type": ["number", "null"], **_DURATION},
            "max_duration": {"type": ["number", "null"], **_DURATION},
            "folder": {"type": ["string", "null"], **_FOLDER},
            "tags": {"type": ["array", "null"], "items": _TAG, **_TAGS},
            **{name: {"type": ["string", "null"], **_INSTANT, "description": description}
               for name, description in _INGESTED.items()},
            "mode": {"type": ["string", "null"], **_MODE},
        },
    },
    "Like": {
        "description": "more moments like this one: a segment, or the segment of a video holding second t. The "
                       "search runs with that segment's stored embedding; the segment itself is left out of the "
                       "results, the rest of its video is not",
        "oneOf": [
            {"type": "object", "required": ["segment_id"], "additionalProperties": False,
             "properties": {"segment_id": _VIDEO_ID}},
            {"type": "object", "required": ["video_id", "t"], "additionalProperties": False,
             "properties": {"video_id": _VIDEO_ID, "t": {"type": "number", "minimum": 0, "description": "seconds"}}},
        ],
    },
    "ImageSearchRequest": {
        "type": "object",
        "required": ["image"],
        "description": "search by an example picture, encoded as ingestion encodes a video frame",
        "properties": {
            "image": {"type": "string", "format": "binary",
                      "description": "JPEG, PNG or WebP, at most VIDSEEK_MAX_IMAGE_BYTES (10 MiB) and "
                                     "PIL.Image.MAX_IMAGE_PIXELS pixels"},
            "q": {"type": "string", "maxLength": MAX_QUERY_CHARS,
                  "description": "optional text: the search runs with the normalised weighted sum of both embeddings"},
            "image_weight": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                             "description": "the picture's share when q is given (1: the picture alone, 0: the text alone)"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "rerank": {"type": "string", "enum": list(RERANKERS),
                       "description": "as in GET /api/search; llm needs q (it reads the text)"},
            "offset": _OFFSET,
            "min_score": {"type": "number", **_MIN_SCORE},
            "video_ids": {"type": "array", "items": _VIDEO_ID, "minItems": 1, "maxItems": MAX_FILTER_IDS,
                          "description": "search only these videos (repeated fields, or comma-separated)"},
            "min_duration": {"type": "number", **_DURATION},
            "max_duration": {"type": "number", **_DURATION},
            "folder": {"type": "string", **_FOLDER},
            "tags": {"type": "array", "items": _TAG, **_TAGS},
            **{name: {"type": "string", **_INSTANT, "description": description} for name, description in _INGESTED.items()},
            "mode": {"type": "string", **_MODE, "description": "hybrid also matches the words of q (needs q)"},
        },
    },
    "Hit": {
        "type": "object",
        "required": ["video_id", "title", "score", "first_stage_score", "rerank_score", "fused_score", "signals", "ranks",
                     "segment_id", "start", "end", "segment_start", "segment_end", "stream_url", "moments"],
        "properties": {
            "video_id": {"type": "integer"},
            "title": {"type": "string"},
            "file_name": {"type": "string", "description": "the file's name (tells apart files with the same stem)"},
            "folder": {"type": "string", "description": "the name of the folder holding the file (not its path)"},
            "score": {"type": "number", "description": "what the hits are ordered by: rerank_score when set, else "
                                                       "fused_score in hybrid mode, else first_stage_score"},
            "first_stage_score": {"type": "number", "description": "cosine similarity of the query and the best segment"},
            "rerank_score": {"type": ["number", "null"],
                             "description": "late: mix of first-stage and token scores; llm: P(yes); null when not rescored"},
            "fused_score": {"type": ["number", "null"],
                            "description": f"mode=hybrid: sum of 1/({RRF_K} + rank) over the rankings that found the "
                                           "video (what score is when not reranked); null in vector mode"},
            "signals": {"type": "array", "items": {"type": "string", "enum": list(SIGNALS)},
                        "description": "the rankings that found the video: vector (its segments' embeddings), "
                                       "text (its title, file name or tags hold words of the query)"},
            "ranks": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1},
                      "description": "mode=hybrid: the video's 1-based rank in each ranking that found it"},
            "segment_id": {"type": "integer"},
            "start": {"type": "number", "description": "seconds; the moment refined by the reranker when it refined it"},
            "end": {"type": "number"},
            "segment_start": {"type": "number", "description": "the first-stage segment's start, seconds"},
            "segment_end": {"type": "number"},
            "thumbnail_url": {"type": ["string", "null"],
                              "description": "JPEG of the segment holding the matched moment (the refined one when reranking moved it)"},
            "stream_url": {"type": "string"},
            "video_url": {"type": "string"},
            "moments": {"type": "array", "items": {"$ref": "#/components/schemas/Moment"}, "maxItems": 3},
        },
    },
    "Rerank": {
        "type": "object",
        "required": ["method", "fallback"],
        "properties": {
            "method": {"type": "string", "enum": list(RERANKERS)},
            "candidates": {"type": "integer", "description": "first-stage videos handed to the reranker (at most rerank_k)"},
            "rescored": {"type": "integer"},
            "without_summary": {"type": "array", "items": {"type": "integer"},
                                "description": "videos with no stored summary: they kept their first-stage score"},
            "fallback": {"type": "boolean", "description": "the reranker could not run; first-stage order kept"},
            "reason": {"type": ["string", "null"]},
            "details": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "SearchResult": {
        "type": "object",
        "required": ["query", "mode", "hits", "rerank", "timings_ms"],
        "properties": {
            "query": {"type": "string",
                      "description": "what was searched: the text, 'image', 'TEXT + image (image_weight W)', 'like segment N'"},
            "mode": {"type": "string", "enum": list(SEARCH_MODES)},
            "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
            "candidates": {"type": "integer"},
            "rerank": {"$ref": "#/components/schemas/Rerank"},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"},
                           "description": "per stage: encode, search, text (mode=hybrid), group, rerank "
                                          "(+ rerank_load, rerank_score), total"},
            "space": {"type": "string", "description": "the embedding space that answered (changes once when "
                                                       "`vidseek reindex` switches the active space)"},
        },
    },
    "Video": {
        "type": "object",
        "required": ["id", "title", "tags", "status"],
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "sorted, normalised (lower case)"},
            "file_name": {"type": "string"},
            "folder": {"type": "string", "description": "the name of the folder holding the file"},
            "path": {"type": "string"},
            "content_hash": {"type": "string"},
            "size_bytes": {"type": "integer"},
            "duration": {"type": ["number", "null"]},
            "fps": {"type": ["number", "null"]},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "error": {"type": ["string", "null"]},
            "stream_url": {"type": "string"},
            "segment_count": {"type": "integer", "description": "segments stored (in listings and single videos)"},
            "segments": {"type": "array", "items": {"type": "object"}},
        },
    },
    "VideoUpdate": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE_CHARS},
            "tags": {"type": "array", "items": {**_TAG, "pattern": "^[^,]+$"}, "maxItems": MAX_TAGS,
                     "description": "replaces the video's tags ([] removes them); each is stored in lower case, "
                                    "NFKC, with its whitespace collapsed; no commas or control characters"},
        },
    },
    "VideoList": {
        "type": "object",
        "required": ["videos", "total"],
        "properties": {
            "videos": {"type": "array", "items": {"$ref": "#/components/schemas/Video"}},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "status", "progress"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "video_id": {"type": ["integer", "null"]},
            "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "message": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "precision": {"type": ["string", "null"], "enum": ["fp32", "bf16", "fp16", None],
                          "description": "float type the job's encoder ran at (null until it encodes)"},
            "job_url": {"type": "string"},
        },
    },
    "Library": {
        "type": "object",
        "required": ["videos", "segments_indexed", "rerankers", "write_key_required"],
        "properties": {
            "videos": {"type": "object", "description": "total, and how many are queued, running, done, failed",
                       "additionalProperties": {"type": "integer"}},
            "segments_indexed": {"type": "integer", "description": "segments this process's index searches"},
            "model": {"type": "string"},
            "default_rerank": {"type": "string", "enum": list(RERANKERS)},
            "rerankers": {"type": "array", "items": {
                "type": "object", "required": ["name", "available", "reason"],
                "properties": {"name": {"type": "string", "enum": list(RERANKERS)},
                               "available": {"type": "boolean", "description": "it can rescore some video of the library now"},
                               "reason": {"type": ["string", "null"], "description": "why not, when unavailable"}}}},
            "ingestion": {"type": "boolean", "description": "this process accepts ingestion requests"},
            "write_key_required": {"type": "boolean", "description": "write routes need the API key"},
            "max_upload_mb": {"type": "integer"},
            "video_extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "database": {"type": "string"},
            "index_segments": {"type": "integer", "description": "segments in this process's index"},
            "index_refreshed_seconds_ago": {
                "type": ["number", "null"],
                "description": "how long ago the index last pulled catalog changes (every VIDSEEK_INDEX_REFRESH_SECONDS)",
            },
            "index": {"type": "string", "enum": ["flat", "ivf", "ivfpq", "hnsw"],
                      "description": "the index structure searched now (VIDSEEK_INDEX_TYPE=auto: flat, then ivf)"},
            "index_lists": {"type": ["string", "null"], "enum": ["fp32", "fp16", None],
                            "description": "how the IVF lists searched now hold vectors (VIDSEEK_INDEX_LISTS; a snapshot "
                                           "saved otherwise is rebuilt at start); null for an index without such lists"},
            "model": {"type": "string"},
            "precision": {"type": "string", "enum": ["fp32", "bf16", "fp16"],
                          "description": "dtype the model's weights were cast to at load (VIDSEEK_PRECISION)"},
            "precision_reason": {"type": "string", "description": "why, e.g. 'auto: CPU AVX2 (no bf16 units)'"},
            "space": {"type": "string", "description": "the embedding space this process answers from"},
            "reindex": {
                "type": ["object", "null"],
                "description": "the re-index in progress (`vidseek reindex`), or null when none is",
                "required": ["target", "done", "total", "failed"],
                "properties": {
                    "target": {"type": "string", "description": "the embedding space being built"},
                    "done": {"type": "integer", "description": "indexed videos with segments in the target space"},
                    "total": {"type": "integer", "description": "indexed videos"},
                    "failed": {"type": "integer",
                               "description": "videos whose re-indexing failed (they keep serving from the active space)"},
                },
            },
        },
    },
}

_WRITE_SECURITY = [{"ApiKeyHeader": []}, {"BearerKey": []}]
_ALWAYS_OPEN = ("/healthz",)


def _protectable_reads(doc: dict[str, Any]) -> dict[str, Any]:
    """Read operations take the key optionally, and need it with ``VIDSEEK_PROTECT_READS=1``."""
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if path in _ALWAYS_OPEN or "security" in operation:
                continue
            operation["security"] = [{}, *_WRITE_SECURITY]
            operation["responses"]["401"] = _error("missing or wrong API key (only with VIDSEEK_PROTECT_READS=1)")
    return doc


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI document; ``version`` is the package version."""
    return _protectable_reads({
        "openapi": "3.1.0",
        "info": {
            "title": "vidseek",
            "version": version,
            "description": "Text-to-video retrieval: find the videos, and the moment inside each, that match a sentence.",
        },
        "paths": {
            "/api/search": {
                "get": {
                    "operationId": "searchVideos",
                    "summary": "Rank videos for a text query",
                    "parameters": [
                        {"name": "q", "in": "query", "required": True,
                         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}},
                        {"name": "k", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}},
                        {"name": "rerank", "in": "query", "required": False, "schema": {"type": "string", "enum": list(RERANKERS)},
                         "description": "rescore the top VIDSEEK_RERANK_K videos from their stored summaries "
                                        "(default VIDSEEK_RERANK)"},
                        {"name": "mode", "in": "query", "required": False, "schema": {"type": "string", **_MODE}},
                        *_filter_params(),
                    ],
                    "responses": {"200": _json("SearchResult", "ranked videos"),
                                  "400": _error("empty or invalid query, unknown reranker or mode, bad filter or paging "
                                                "value, folder outside the media roots")},
                },
                "post": {
                    "operationId": "searchVideosJson",
                    "summary": "Rank videos for a text query given as JSON (for queries too long for a URL), for a "
                               "stored moment (like: more moments like this), or for an example picture (multipart)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
                            "multipart/form-data": {
                                "schema": {"$ref": "#/components/schemas/ImageSearchRequest"},
                                "encoding": {"image": {"contentType": "image/jpeg, image/png, image/webp"}},
                            },
                        },
                    },
                    "responses": {"200": _json("SearchResult", "ranked videos"),
                                  "400": _error("not a JSON object, empty or invalid query, q and like together, "
                                                "not a JPEG/PNG/WebP picture, unknown reranker or mode (or llm or "
                                                "hybrid without text), "
                                                "bad filter or paging value, folder outside the media roots"),
                                  "404": _error("like names no segment or video, or no segment at t"),
                                  "413": _error("JSON body larger than 64 KiB, or picture larger than "
                                                "VIDSEEK_MAX_IMAGE_BYTES or PIL.Image.MAX_IMAGE_PIXELS pixels")},
                },
            },
            "/api/videos": {
                "get": {
                    "operationId": "listVideos",
                    "summary": "List videos in the catalog, newest first",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0}},
                        {"name": "status", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["queued", "running", "done", "failed"]}},
                    ],
                    "responses": {"200": _json("VideoList", "a page of videos"),
                                  "400": _error("bad paging arguments or status")},
                },
                "post": {
                    "operationId": "addVideo",
                    "summary": "Ingest a video: a path inside the media roots, or an uploaded file",
                    "security": _WRITE_SECURITY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "object", "required": ["path"],
                                                             "properties": {"path": {"type": "string", "minLength": 1}}}},
                            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
                        },
                    },
                    "responses": {
                        "202": _json("Job", "ingestion job queued"),
                        "400": _error("malformed request"),
                        "401": _error("missing or wrong API key"),
                        "403": _error("path outside the media roots"),
                        "404": _error("no such file"),
                        "413": _error("upload larger than the limit"),
                        "422": _error("not a usable video, or a directory (the API ingests one file)"),
                        "503": _error("ingestion unavailable"),
                    },
                },
            },
            "/api/videos/{video_id}": {
                "get": {
                    "operationId": "getVideo",
                    "summary": "A video with its segments",
                    "parameters": [_id_param("video_id")],
                    "responses": {"200": _json("Video", "the video"), "404": _error("no such video")},
                },
                "patch": {
                    "operationId": "updateVideo",
                    "summary": "Set a video's title and/or tags",
                    "security": _WRITE_SECURITY,
                    "parameters": [_id_param("video_id")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VideoUpdate"}}},
                    },
                    "responses": {"200": _json("Video", "the video as changed, with its segments"),
                                  "400": _error("not a JSON object, unknown field, bad title or tags"),
                                  "401": _error("missing or wrong API key"),
                                  "404": _error("no such video"),
                                  "413": _error("body larger than 64 KiB")},
                },
                "delete": {
                    "operationId": "deleteVideo",
                    "summary": "Remove a video, its segments and index entries",
                    "security": _WRITE_SECURITY,
                    "parameters": [_id_param("video_id")],
                    "responses": {"204": {"description": "deleted"}, "401": _error("missing or wrong API key"),
                                  "404": _error("no such video")},
                },
            },
            "/api/videos/{video_id}/stream": {
                "get": {
                    "operationId": "streamVideo",
                    "summary": "The video file, with HTTP range requests for seeking",
                    "parameters": [_id_param("video_id"),
                                   {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the whole file", "content": {"video/*": {}}},
                        "206": {"description": "the requested byte range", "content": {"video/*": {}}},
                        "404": _error("no such video or file"),
                        "416": _error("range not satisfiable (with Content-Range: bytes */<size>)"),
                    },
                }
            },
            "/api/segments/{segment_id}/thumbnail": {
                "get": {
                    "operationId": "segmentThumbnail",
                    "summary": "JPEG of a segment's middle frame",
                    "parameters": [_id_param("segment_id")],
                    "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}, "404": _error("no thumbnail")},
                }
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "Status and progress of an ingestion job",
                    "parameters": [_id_param("job_id")],
                    "responses": {"200": _json("Job", "the job"), "404": _error("no such job")},
                }
            },
            "/api/library": {
                "get": {
                    "operationId": "librarySummary",
                    "summary": "What the library holds (videos by status, indexed segments) and which rerankers can act on it",
                    "responses": {"200": _json("Library", "the library")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and readiness",
                    "responses": {"200": _json("Health", "healthy"), "503": _json("Health", "database unreachable")},
                }
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document",
                        "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {}}}}}
            },
            "/metrics": {
                "get": {"operationId": "metrics",
                        "summary": "Prometheus metrics: requests, search stages, index size and refresh age, jobs, ingestion",
                        "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}
            },
            "/": {
                "get": {"operationId": "webUi", "summary": "The search web page",
                        "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}
            },
            "/favicon.ico": {
                "get": {"operationId": "favicon", "summary": "The web page's icon (SVG)",
                        "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}}}
            },
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            },
        },
    })
