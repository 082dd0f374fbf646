"""Videos, jobs, streaming and thumbnails.

Write routes (``POST``/``PATCH``/``DELETE``) need the API key when one is configured.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

from flask import Blueprint, jsonify, request, send_file

from search.api.auth import require_api_key
from search.api.context import ctx
from search.ingestion import QueueUnavailable
from search.api.errors import ApiError
from search.api.search_routes import int_arg
from search.api.serialize import job_json, video_json
from search.media_paths import (
    MediaRejected,
    PathNotAllowed,
    confine,
    is_directory,
    is_regular_file,
    is_video_name,
    remove_empty_folders,
    require_utf8_name,
)
from search.tables import Job, Status, Video
from search.video_metadata import MetadataError, normalise_tags, normalise_title

bp = Blueprint("videos", __name__, url_prefix="/api")
log = logging.getLogger(__name__)
MAX_PATCH_BODY = 64 * 1024  # bytes of a PATCH body: a title and 20 short tags
PATCH_FIELDS = frozenset({"title", "tags"})


def _enqueue(path: Path) -> Job:
    c = ctx()
    if c.ingestion is None:
        raise ApiError(503, "ingestion is not available in this process")
    try:
        require_utf8_name(path)
        c.ingestion.validate(path)
    except MediaRejected as exc:
        log.info("video refused", extra={"path": str(path), "reason": str(exc), "detail": getattr(exc, "detail", None)})
        raise ApiError(422, f"not a usable video: {exc}") from None
    job = c.catalog.create_job(path)
    try:
        c.ingestion.enqueue(job.id)
    except QueueUnavailable as exc:
        c.catalog.finish_job(job.id, Status.failed, error=f"could not be queued: {exc}")
        raise ApiError(503, f"ingestion is temporarily unavailable: {exc}") from None
    return job


def _accepted(job: Job):
    response = jsonify(job_json(job))
    response.status_code = 202
    response.headers["Location"] = job_json(job)["job_url"]
    return response


def stored_upload_name(client_name: str) -> str:
    """A safe file name for an uploaded file that keeps the client's name, Unicode included: path
    separators, control characters and leading dots are replaced, and the name is cut to 200 bytes
    (extension kept). The video's title is the stored name's stem, so it reads as the client's."""
    name = "".join("_" if ch in "/\\" or unicodedata.category(ch).startswith("C") else ch for ch in client_name)
    name = name.encode("utf-8", "replace").decode("utf-8").strip()
    dot = name.rfind(".")
    stem, suffix = (name[:dot], name[dot:]) if dot >= 0 else (name, "")
    stem = stem.lstrip(". ")
    while len((stem + suffix).encode("utf-8")) > 200:
        stem = stem[:-1]
    return (stem.strip() or "upload") + suffix


def _store_upload() -> Path:
    """Write the multipart ``file`` to its own new folder under the upload folder (a temporary name
    first, renamed when complete: a crash never leaves a half-written video behind)."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "multipart upload needs a 'file' field with a file name")
    name = stored_upload_name(Path(upload.filename.replace("\\", "/")).name)
    if not is_video_name(Path(name)):
        raise ApiError(422, f"not a video file name: {upload.filename!r}")
    uploads = ctx().settings.upload_dir
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=uploads, prefix=""))
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(upload.stream, fh, 1 << 20)
        final = folder / name
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        folder.rmdir()
        raise
    return final


def _remove_upload(path: Path) -> None:
    """Delete an uploaded file and its folder (vidseek owns uploads; files in media roots are the user's)."""
    uploads = ctx().settings.upload_dir.resolve()
    if path.resolve().is_relative_to(uploads):
        path.unlink(missing_ok=True)
        remove_empty_folders(path.resolve().parent, uploads)


@bp.post("/videos")
@require_api_key
def add_video():
    if request.mimetype == "multipart/form-data":
        path = _store_upload()
        try:
            return _accepted(_enqueue(path))
        except ApiError:
            _remove_upload(path)
            raise
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"].strip():
        raise ApiError(400, 'send JSON {"path": "<file inside a media root>"} or a multipart "file" upload')
    try:
        path = confine(body["path"], ctx().settings.allowed_media_roots)
    except PathNotAllowed as exc:
        raise ApiError(403, str(exc)) from None
    if is_directory(path):
        raise ApiError(422, f"{body['path']} is a directory; the API ingests one file — use the CLI "
                            "(vidseek ingest) for folders")
    if not is_regular_file(path):
        raise ApiError(404, f"no such file: {body['path']}")
    return _accepted(_enqueue(path))


@bp.get("/videos")
def list_videos():
    limit = min(max(int_arg("limit", 50), 1), 500)
    offset = max(int_arg("offset", 0), 0)
    status = request.args.get("status") or None
    if status is not None and status not in Status.__members__:
        raise ApiError(400, f"status must be one of {', '.join(Status.__members__)}")
    catalog = ctx().catalog
    videos, total = catalog.list_videos(limit, offset, Status(status) if status else None)
    ids = [v.id for v in videos]
    counts, tags = catalog.segment_counts(ids, ctx().queries.space.key), catalog.tags_of(ids)  # segments searched
    return jsonify({"videos": [video_json(v, tags.get(v.id, []), segment_count=counts.get(v.id, 0)) for v in videos],
                    "total": total, "limit": limit, "offset": offset})


def _video_or_404(video_id: int):
    video = ctx().catalog.get_video(video_id)
    if video is None:
        raise ApiError(404, f"no video {video_id}")
    return video


def _full_video_json(video: Video) -> dict:
    """A video with its tags and segments (GET and PATCH answer with it)."""
    catalog = ctx().catalog
    return video_json(video, catalog.tags_of([video.id]).get(video.id, []),
                      catalog.segments_of(video.id, ctx().queries.space.key))  # the segments searched


@bp.get("/videos/<int:video_id>")
def get_video(video_id: int):
    return jsonify(_full_video_json(_video_or_404(video_id)))


def _metadata_changes() -> tuple[str | None, tuple[str, ...] | None]:
    """The ``title`` and ``tags`` of a PATCH body, normalised (``search.video_metadata``); None: unchanged."""
    request.max_content_length = MAX_PATCH_BODY
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise ApiError(400, 'send a JSON object with "title" and/or "tags", such as {"tags": ["beach", "family"]}')
    unknown = sorted(set(body) - PATCH_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: only title and tags can be set")
    try:
        title = normalise_title(body["title"]) if "title" in body else None
        if "tags" in body and not isinstance(body["tags"], list):
            raise MetadataError("tags must be a list of strings")
        tags = normalise_tags(body["tags"]) if "tags" in body else None
    except MetadataError as exc:
        raise ApiError(400, str(exc)) from None
    return title, tags


@bp.patch("/videos/<int:video_id>")
@require_api_key
def update_video(video_id: int):
    title, tags = _metadata_changes()
    video = ctx().catalog.set_metadata(video_id, title, tags)
    if video is None:
        raise ApiError(404, f"no video {video_id}")
    return jsonify(_full_video_json(video))


@bp.delete("/videos/<int:video_id>")
@require_api_key
def delete_video(video_id: int):
    c = ctx()
    video = _video_or_404(video_id)
    thumbnails = c.catalog.delete_video(video_id) or []
    for rel in thumbnails:
        thumbnail = c.settings.thumbnail_dir / rel
        thumbnail.unlink(missing_ok=True)
        remove_empty_folders(thumbnail.parent, c.settings.thumbnail_dir)
    _remove_upload(Path(video.path))
    c.index.refresh(force=True)
    return "", 204


@bp.get("/videos/<int:video_id>/stream")
def stream_video(video_id: int):
    video = _video_or_404(video_id)
    try:
        path = confine(video.path, ctx().settings.allowed_media_roots)
    except PathNotAllowed:
        raise ApiError(404, "the video file is no longer inside the media roots") from None
    if not is_regular_file(path):
        raise ApiError(404, "the video file is missing on disk")
    return send_file(path, conditional=True, etag=True, max_age=3600)


@bp.get("/segments/<int:segment_id>/thumbnail")
def segment_thumbnail(segment_id: int):
    c = ctx()
    segment = c.catalog.get_segment(segment_id)
    if segment is None or not segment.thumbnail:
        raise ApiError(404, f"no thumbnail for segment {segment_id}")
    path = (c.settings.thumbnail_dir / segment.thumbnail).resolve()
    if not path.is_relative_to(c.settings.thumbnail_dir.resolve()) or not path.is_file():
        raise ApiError(404, f"thumbnail of segment {segment_id} is missing")
    return send_file(path, mimetype="image/jpeg", conditional=True, max_age=86400)


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int):
    job = ctx().catalog.get_job(job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return jsonify(job_json(job))
