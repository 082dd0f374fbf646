"""Catalog rows and query results -> JSON-ready dicts (one place, shared by all routes)."""

from __future__ import annotations

from flask import url_for

from search.catalog import Catalog, VideoName
from search.hybrid import VECTOR
from search.query import Moment, SearchResult, VideoHit
from search.rerank_service import RerankInfo
from search.tables import Job, Segment, SpaceState, Video


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def thumbnail_url(segment_id: int, thumbnail: str | None) -> str | None:
    return url_for("videos.segment_thumbnail", segment_id=segment_id) if thumbnail else None


def moment_json(m: Moment) -> dict:
    return {
        "segment_id": m.segment_id,
        "start": round(m.start, 3),
        "end": round(m.end, 3),
        "score": round(m.score, 6),
        "thumbnail_url": thumbnail_url(m.segment_id, m.thumbnail),
    }


def hit_json(hit: VideoHit) -> dict:
    """A hit: ``score`` orders the results; ``first_stage_score`` is the best segment's cosine,
    ``rerank_score`` the reranker's (null when it did not rescore this video); ``start``/``end`` are the
    matched moment, refined by the reranker when it did so, ``segment_start``/``segment_end`` the
    first-stage segment's range; ``thumbnail_url`` shows the matched moment (the segment holding the
    refined moment when the reranker moved it elsewhere in the video). ``signals`` say which rankings
    found the video (``vector``, ``text``: hybrid search), ``ranks`` its rank in each, ``fused_score`` its
    reciprocal-rank-fusion score (null in vector mode)."""
    segment = moment_json(hit.moment)
    if hit.preview is not None:
        segment["thumbnail_url"] = thumbnail_url(hit.preview.id, hit.preview.thumbnail)
    return {
        "video_id": hit.video_id,
        "title": hit.title,
        "file_name": hit.name.file_name,
        "folder": hit.name.folder,
        "score": round(hit.score, 6),
        "first_stage_score": segment.pop("score"),
        "rerank_score": round(hit.rerank.score, 6) if hit.rerank is not None else None,
        "fused_score": round(hit.fusion.score, 6) if hit.fusion is not None else None,
        "signals": hit.fusion.signals if hit.fusion is not None else [VECTOR],
        "ranks": dict(hit.fusion.ranks) if hit.fusion is not None else {},
        **segment,
        "start": round(hit.start, 3),
        "end": round(hit.end, 3),
        "segment_start": segment["start"],
        "segment_end": segment["end"],
        "stream_url": url_for("videos.stream_video", video_id=hit.video_id),
        "video_url": url_for("videos.get_video", video_id=hit.video_id),
        "moments": [moment_json(m) for m in hit.more],
    }


def rerank_json(info: RerankInfo) -> dict:
    return {
        "method": info.method,
        "candidates": info.candidates,
        "rescored": info.rescored,
        "without_summary": info.without_summary,
        "fallback": info.fallback,
        "reason": info.reason,
        "details": info.details,
    }


def search_json(result: SearchResult) -> dict:
    return {
        "query": result.query,
        "mode": result.mode,
        "hits": [hit_json(h) for h in result.hits],
        "candidates": result.candidates,
        "rerank": rerank_json(result.rerank),
        "timings_ms": result.timings_ms,
        "space": result.space,
    }


def reindex_json(catalog: Catalog) -> dict | None:
    """The re-index in progress (``vidseek reindex``): target space, videos done / total in it, failed;
    None when no space is being built."""
    building = catalog.space_in(SpaceState.building)
    if building is None:
        return None
    p = catalog.reindex_progress(building.key)
    return {"target": p.target, "done": p.done, "total": p.total, "failed": p.failed}


def video_json(video: Video, tags: list[str], segments: list[Segment] | None = None,
               segment_count: int | None = None) -> dict:
    """A video with its ``tags``; with ``segments``, those too. ``segment_count`` is ``len(segments)`` when
    they are given, else the count passed (a listing counts them in one query), else absent."""
    name = VideoName.of(video.title, video.path)
    data = {
        "id": video.id,
        "title": video.title,
        "tags": tags,
        "file_name": name.file_name,
        "folder": name.folder,
        "path": video.path,
        "content_hash": video.content_hash,
        "size_bytes": video.size_bytes,
        "duration": video.duration,
        "fps": video.fps,
        "width": video.width,
        "height": video.height,
        "status": video.status.value,
        "error": video.error,
        "created_at": _iso(video.created_at),
        "updated_at": _iso(video.updated_at),
        "stream_url": url_for("videos.stream_video", video_id=video.id),
    }
    if segments is not None:
        segment_count = len(segments)
    if segment_count is not None:
        data["segment_count"] = segment_count
    if segments is not None:
        data["segments"] = [
            {
                "id": s.id,
                "ordinal": s.ordinal,
                "start": s.start,
                "end": s.end,
                "frame_count": s.frame_count,
                "thumbnail_url": thumbnail_url(s.id, s.thumbnail),
            }
            for s in segments
        ]
    return data


def job_json(job: Job) -> dict:
    return {
        "id": job.id,
        "path": job.path,
        "video_id": job.video_id,
        "status": job.status.value,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "attempts": job.attempts,
        "precision": job.precision,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "job_url": url_for("videos.get_job", job_id=job.id),
    }
