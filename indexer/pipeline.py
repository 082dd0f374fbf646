"""Ingestion of one video: decode -> sample -> segment -> encode -> catalog.

The catalog is updated in one transaction at the end (segments swapped in, video marked
done), so a job killed half-way leaves nothing half-written and can simply run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer.decode import DecodeError, SampledFrame, VideoInfo, center_crop, iter_sampled_frames, probe, sample_times
from indexer.media import sha256_file
from models.encoders import SegmentEncoder
from search.catalog import Catalog, SegmentRecord
from search.media_paths import PathNotAllowed, confine
from search.settings import Settings
from search.tables import Status

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
THUMBNAIL_HEIGHT = 180


def embedding_key(encoder: SegmentEncoder) -> str:
    """Names the embedding space: vectors with different keys are not comparable."""
    return space_key(encoder.backbone.key, encoder.name)


def space_key(backbone_key: str, encoder_name: str) -> str:
    return f"{backbone_key}|{encoder_name}"


@dataclass(frozen=True)
class FrameGroup:
    """Consecutive sampled frames that become one segment."""

    ordinal: int
    frames: list[SampledFrame]

    @property
    def middle(self) -> SampledFrame:
        return self.frames[len(self.frames) // 2]


@dataclass(frozen=True)
class EncodedVideo:
    info: VideoInfo
    segments: list[SegmentRecord]
    frames: int


def group_frames(frames: Iterable[SampledFrame], size: int) -> Iterator[FrameGroup]:
    """Split a frame stream into consecutive groups of ``size`` (the last may be shorter)."""
    batch: list[SampledFrame] = []
    ordinal = 0
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield FrameGroup(ordinal, batch)
            ordinal, batch = ordinal + 1, []
    if batch:
        yield FrameGroup(ordinal, batch)


def batch_groups(groups: Iterable[FrameGroup], batch_segments: int) -> Iterator[list[FrameGroup]]:
    """Batches of up to ``batch_segments`` groups with the same frame count (encoders need equal T)."""
    batch: list[FrameGroup] = []
    for group in groups:
        if batch and (len(batch) == batch_segments or len(group.frames) != len(batch[0].frames)):
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def save_thumbnail(frame: SampledFrame, path: Path) -> None:
    """JPEG of ``frame`` scaled to ``THUMBNAIL_HEIGHT`` px high, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(frame.image)
    image.thumbnail((THUMBNAIL_HEIGHT * 4, THUMBNAIL_HEIGHT))
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="JPEG", quality=82)
    tmp.replace(path)


class VideoIngestor:
    """Runs ingestion jobs against one catalog with one loaded encoder."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder: SegmentEncoder):
        self.settings, self.catalog, self.encoder = settings, catalog, encoder
        self.key = embedding_key(encoder)

    # ----- one job ------------------------------------------------------------------------
    def run_job(self, job_id: int, progress: ProgressFn | None = None) -> Status:
        """Run job ``job_id`` to completion; returns the final job status.

        Bad input (not allowed, not a video, corrupt) fails the job and its video with the
        reason; unexpected errors mark the job failed and propagate (so a task queue retries).
        """
        job = self.catalog.start_job(job_id)
        if job is None:
            return Status.done
        try:
            path = confine(job.path, self.settings.allowed_media_roots)
            if not path.is_file():
                raise DecodeError(f"{job.path} does not exist or is not a file")
        except (PathNotAllowed, DecodeError) as exc:
            self.catalog.finish_job(job_id, Status.failed, error=str(exc))
            return Status.failed
        content_hash = sha256_file(path)
        video = self.catalog.get_or_create_video(path, content_hash, path.stat().st_size)
        self.catalog.update_job(job_id, video_id=video.id)
        if video.status is Status.done and video.embedding_key == self.key:
            self.catalog.finish_job(job_id, Status.done, message="already indexed")
            return Status.done
        self.catalog.update_video(video.id, status=Status.running, error=None, path=str(path))
        report = self._progress_reporter(job_id, progress)
        try:
            encoded = self.encode_video(path, content_hash, report)
        except DecodeError as exc:
            self.catalog.update_video(video.id, status=Status.failed, error=str(exc))
            self.catalog.finish_job(job_id, Status.failed, error=str(exc))
            log.warning("video rejected", extra={"job": job_id, "path": str(path), "reason": str(exc)})
            return Status.failed
        except Exception as exc:
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self.catalog.update_video(video.id, status=Status.failed, error=reason)
            self.catalog.finish_job(job_id, Status.failed, error=reason)
            raise
        info = encoded.info
        self.catalog.replace_segments(
            video.id,
            encoded.segments,
            self.key,
            duration=info.duration,
            fps=info.fps,
            width=info.width,
            height=info.height,
            frames_sampled=encoded.frames,
        )
        self.catalog.finish_job(job_id, Status.done, message=f"{len(encoded.segments)} segments")
        log.info("video indexed", extra={"job": job_id, "video": video.id, "segments": len(encoded.segments)})
        return Status.done

    def _progress_reporter(self, job_id: int, callback: ProgressFn | None) -> ProgressFn:
        last = [0.0]

        def report(fraction: float) -> None:
            if callback is not None:
                callback(fraction)
            now = time.monotonic()
            if now - last[0] >= 1.0 or fraction >= 1.0:
                last[0] = now
                self.catalog.update_job(job_id, progress=round(min(fraction, 1.0), 4))

        return report

    # ----- decoding + encoding ------------------------------------------------------------
    def encode_video(self, path: Path, content_hash: str, progress: ProgressFn | None = None) -> EncodedVideo:
        """Decode, segment and encode ``path``; thumbnails are written, the catalog is not touched."""
        s = self.settings
        info = probe(path)
        expected = len(sample_times(info.duration, s.sample_fps, s.max_frames))
        size = self.encoder.backbone.image_size
        frames = iter_sampled_frames(path, s.sample_fps, s.max_frames, short_side=size, info=info)
        records: list[SegmentRecord] = []
        done = 0
        for batch in batch_groups(group_frames(frames, s.segment_frames), s.batch_segments):
            pixels = torch.stack(
                [self.encoder.backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in g.frames])) for g in batch]
            )
            encoding = self.encoder.encode(pixels)
            embeddings = encoding.embeddings.cpu().numpy()
            for group, vector in zip(batch, embeddings):
                thumb = f"{content_hash[:2]}/{content_hash}/{group.ordinal:05d}.jpg"
                save_thumbnail(group.middle, s.thumbnail_dir / thumb)
                records.append(
                    SegmentRecord(group.ordinal, group.frames[0].time, 0.0, len(group.frames), thumb, vector)
                )
                done += len(group.frames)
            if progress is not None:
                progress(min(done / expected, 0.999))
        ends = [r.start for r in records[1:]] + [max(info.duration, records[-1].start)]
        segments = [SegmentRecord(r.ordinal, r.start, e, r.frame_count, r.thumbnail, r.embedding) for r, e in zip(records, ends)]
        return EncodedVideo(info=info, segments=segments, frames=done)
