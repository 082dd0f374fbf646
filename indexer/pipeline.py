"""Ingestion of one video: decode -> sample -> segment -> encode -> catalog.

The catalog is updated in one transaction at the end (segments swapped in, video marked
done), so a job killed half-way leaves nothing half-written and can simply run again. While a
job runs, its worker holds a lease on it, renewed by a heartbeat (``indexer.leases``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sqlalchemy.exc import InterfaceError, OperationalError

from indexer.decode import DecodeError, SampledFrame, VideoInfo, center_crop, iter_sampled_frames, probe, sample_times
from indexer.leases import JobHeartbeat, LeaseLost
from indexer.media import sha256_file
from models.backbone import ClipBackbone
from models.bvllm import drop_static_frames
from models.encoders import SegmentEncoder
from models.rerankers.llava import LazyLlm, LlmUnavailableError, llm_summary_key
from models.rerankers.prefill import InnerMergeParams
from models.summary import VideoSummary, concat, summarize
from search.catalog import Catalog, SegmentRecord, SummaryRecord
from search.media_paths import MediaRejected, PathNotAllowed, confine, is_regular_file
from search.settings import Settings
from search.tables import LLM_SPACE, Job, Status, utcnow

log = logging.getLogger(__name__)

# Errors that mean "try again later" (the database or the network briefly unreachable), not
# "this video is bad": a job hitting one is retried with backoff, never failed for it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, ConnectionError, TimeoutError)

ProgressFn = Callable[[float], None]
THUMBNAIL_HEIGHT = 180


def embedding_key(encoder: SegmentEncoder) -> str:
    """Names the embedding space: vectors with different keys are not comparable."""
    return space_key(encoder.backbone.key, encoder.name)


def space_key(backbone_key: str, encoder_name: str) -> str:
    return f"{backbone_key}|{encoder_name}"


@dataclass(frozen=True)
class PreparedFrame:
    """A sampled frame ready for the ViT.

    ``pixels`` is ``[3, S, S]`` normalised; ``weight`` is how many sampled frames it stands for
    (more than 1 when static-frame dropping folded repeats into it); ``image`` is the resized,
    uncropped RGB frame used for thumbnails.
    """

    time: float
    weight: int
    pixels: torch.Tensor
    image: np.ndarray


@dataclass(frozen=True)
class FrameGroup:
    """Consecutive frames that become one segment."""

    ordinal: int
    frames: list[PreparedFrame]

    @property
    def middle(self) -> PreparedFrame:
        return self.frames[len(self.frames) // 2]


@dataclass(frozen=True)
class EncodedVideo:
    """``summary``: CLIP-space summary (``VIDSEEK_SUMMARY``); ``llm_summary``: the video LLM's
    (``VIDSEEK_LLM_RERANKER``), with ``llm_note`` saying why it is missing when it could not be made."""

    info: VideoInfo
    segments: list[SegmentRecord]
    frames_sampled: int
    frames_encoded: int
    summary: VideoSummary | None
    llm_summary: VideoSummary | None = None
    llm_note: str | None = None


def prepare_frames(frames: Iterable[SampledFrame], backbone: ClipBackbone, chunk: int = 32) -> Iterator[PreparedFrame]:
    """Centre-crop and normalise sampled frames for ``backbone``, ``chunk`` at a time."""
    size = backbone.image_size
    for batch in _chunks(frames, chunk):
        pixels = backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in batch]))
        for f, p in zip(batch, pixels):
            yield PreparedFrame(f.time, 1, p, f.image)


def drop_repeated_frames(
    frames: Iterable[PreparedFrame], backbone: ClipBackbone, threshold: float, chunk: int = 32
) -> Iterator[PreparedFrame]:
    """Stream form of B-VLLM-style static-frame dropping (``models.bvllm.drop_static_frames``):
    a frame that repeats the last kept frame is folded into it (its weight grows) instead of
    being encoded. Each chunk is judged together with the last kept frame as its anchor."""
    anchor: PreparedFrame | None = None
    for batch in _chunks(frames, chunk):
        head = [anchor] if anchor is not None else []
        pixels = torch.stack([f.pixels for f in head + batch])
        times = torch.tensor([f.time for f in head + batch], dtype=torch.float64)
        spans = drop_static_frames(backbone, pixels, times, threshold)
        kept = []
        for first, size in zip(spans.first.tolist(), spans.sizes.tolist()):
            frame = (head + batch)[first]
            kept.append(PreparedFrame(frame.time, frame.weight + size - 1, frame.pixels, frame.image))
        if anchor is not None:  # the first span is the anchor's: it grew, it is not new
            anchor = kept.pop(0)
            if kept:
                yield anchor
        for frame in kept[:-1]:
            yield frame
        anchor = kept[-1] if kept else anchor
    if anchor is not None:
        yield anchor


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def group_frames(frames: Iterable[PreparedFrame], size: int) -> Iterator[FrameGroup]:
    """Split a frame stream into consecutive groups of ``size`` (the last may be shorter)."""
    for ordinal, batch in enumerate(_chunks(frames, size)):
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


def weighted_segment_embedding(frame_embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[T, E]`` normalised frame embeddings, ``[T]`` weights -> ``[E]`` normalised weighted mean.
    With unit weights this is the encoder's own mean pooling."""
    return F.normalize((frame_embeddings * weights[:, None]).sum(0), dim=-1)


def save_thumbnail(image: np.ndarray, path: Path) -> None:
    """JPEG of an RGB frame scaled to ``THUMBNAIL_HEIGHT`` px high, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb = Image.fromarray(image)
    thumb.thumbnail((THUMBNAIL_HEIGHT * 4, THUMBNAIL_HEIGHT))
    tmp = path.with_suffix(".tmp")
    thumb.save(tmp, format="JPEG", quality=82)
    tmp.replace(path)


class SummaryBuilder:
    """Collects patch tokens segment by segment and compresses them chunk by chunk (bounded memory)."""

    def __init__(self, method: str, chunk_frames: int, params: dict):
        self.method, self.chunk_frames, self.params = method, chunk_frames, params
        self._tokens: list[torch.Tensor] = []
        self._attention: list[torch.Tensor] = []
        self._times: list[float] = []
        self._parts: list[VideoSummary] = []

    def add(self, patch_tokens: torch.Tensor, cls_attention: torch.Tensor, times: list[float]) -> None:
        """One segment: ``patch_tokens [T, N, W]``, ``cls_attention [T, N]``, ``times`` of its T frames."""
        self._tokens.append(patch_tokens)
        self._attention.append(cls_attention)
        self._times.extend(times)
        if len(self._times) >= self.chunk_frames:
            self._flush()

    def _flush(self) -> None:
        if self._times:
            self._parts.append(
                summarize(self.method, torch.cat(self._tokens), torch.cat(self._attention), self._times, **self.params)
            )
            self._tokens, self._attention, self._times = [], [], []

    def build(self) -> VideoSummary | None:
        self._flush()
        return concat(self._parts) if self._parts else None


class UniformFramePicker:
    """Picks, from a stream of prepared frames in time order, the frames shown at ``count`` instants
    spread evenly over the video's sample times -- the uniform frame sampling LLaVA-OneVision uses for
    video. A frame stands for the stream until the next one (static-frame dropping folds repeats into
    the frame before them), so an instant is served by the last frame at or before it; several
    instants may get the same frame."""

    def __init__(self, times: Sequence[float], count: int):
        index = np.linspace(0, len(times) - 1, min(count, len(times))).round().astype(int) if len(times) else []
        self.targets = [times[i] for i in index]
        self.picked: list[PreparedFrame] = []
        self._last: PreparedFrame | None = None

    def tap(self, frames: Iterable[PreparedFrame]) -> Iterator[PreparedFrame]:
        """Pass ``frames`` through, remembering the ones picked."""
        for frame in frames:
            while self._last is not None and len(self.picked) < len(self.targets) and self.targets[len(self.picked)] < frame.time:
                self.picked.append(self._last)
            self._last = frame
            yield frame

    def frames(self) -> list[PreparedFrame]:
        """The picked frames, once the stream is exhausted (instants after the last frame get it)."""
        if self._last is not None:
            self.picked.extend([self._last] * (len(self.targets) - len(self.picked)))
        return self.picked


def lazy_llm(settings: Settings) -> LazyLlm | None:
    """The video LLM ``VIDSEEK_LLM_RERANKER`` names (loaded on first use), or None when none is set."""
    if not settings.llm_reranker:
        return None
    return LazyLlm.of(settings.llm_reranker, settings.device, InnerMergeParams(settings.llm_inner_layer, settings.llm_inner_ratio))


class VideoIngestor:
    """Runs ingestion jobs against one catalog with one loaded encoder (and, when
    ``VIDSEEK_LLM_RERANKER`` is set, the video LLM that summarises videos for the llm reranker)."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder: SegmentEncoder, llm: LazyLlm | None = None):
        self.settings, self.catalog, self.encoder = settings, catalog, encoder
        self.key = embedding_key(encoder)
        self.llm = llm if llm is not None else lazy_llm(settings)

    # ----- one job ------------------------------------------------------------------------
    def run_job(self, job_id: int, progress: ProgressFn | None = None, worker: str = "local") -> Status:
        """Run job ``job_id`` to completion under ``worker``'s lease; returns the job's status.

        Bad input (not allowed, not a video, corrupt) fails the job and its video with the
        reason, at once. Transient errors (:data:`TRANSIENT_ERRORS`) propagate with nothing
        recorded as failed, for the task queue to retry; other unexpected errors mark the job
        failed and propagate.

        Raises:
            JobLeased: another live worker is running the job.
        """
        stale_before = utcnow() - timedelta(seconds=self.settings.job_stale_seconds)
        job = self.catalog.start_job(job_id, worker, stale_before)
        if job is None:
            current = self.catalog.get_job(job_id)
            return current.status if current is not None else Status.failed
        try:
            with JobHeartbeat(self.catalog, job_id, worker, self.settings.heartbeat_seconds) as lease:
                return self._ingest(job, progress, lease)
        except LeaseLost as exc:
            log.warning("job abandoned", extra={"job": job_id, "reason": str(exc)})
            return Status.running
        except (PathNotAllowed, MediaRejected) as exc:
            self._fail(job_id, str(exc))
            log.warning("video rejected", extra={"job": job_id, "path": job.path, "reason": str(exc)})
            return Status.failed
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")
            raise

    def _ingest(self, job: Job, progress: ProgressFn | None, lease: JobHeartbeat) -> Status:
        path = confine(job.path, self.settings.allowed_media_roots)
        if not is_regular_file(path):
            raise DecodeError(f"{job.path} does not exist or is not a file")
        content_hash = sha256_file(path)
        video = self.catalog.get_or_create_video(path, content_hash, path.stat().st_size)
        self.catalog.update_job(job.id, video_id=video.id)
        if video.status is Status.done and video.embedding_key == self.key:
            self.catalog.finish_job(job.id, Status.done, message="already indexed")
            return Status.done
        self.catalog.update_video(video.id, status=Status.running, error=None, path=str(path))
        encoded = self.encode_video(path, content_hash, self._progress_reporter(job.id, progress, lease))
        info = encoded.info
        lease.check()
        self.catalog.replace_segments(
            video.id,
            encoded.segments,
            self.key,
            summaries=self.summary_records(encoded),
            duration=info.duration,
            fps=info.fps,
            width=info.width,
            height=info.height,
            frames_sampled=encoded.frames_sampled,
        )
        message = f"{len(encoded.segments)} segments, {encoded.frames_encoded} of {encoded.frames_sampled} frames encoded"
        if encoded.llm_note:
            message += f"; {encoded.llm_note}"
        self.catalog.finish_job(job.id, Status.done, message=message)
        log.info("video indexed", extra={"job": job.id, "video": video.id, "segments": len(encoded.segments)})
        return Status.done

    def _fail(self, job_id: int, reason: str) -> None:
        """Mark the job failed with ``reason``, and its video too once it is known."""
        self.catalog.finish_job(job_id, Status.failed, error=reason)
        job = self.catalog.get_job(job_id)
        if job is not None and job.video_id is not None:
            self.catalog.update_video(job.video_id, status=Status.failed, error=reason)

    def _progress_reporter(self, job_id: int, callback: ProgressFn | None, lease: JobHeartbeat) -> ProgressFn:
        last = [0.0]

        def report(fraction: float) -> None:
            lease.check()
            if callback is not None:
                callback(fraction)
            now = time.monotonic()
            if now - last[0] >= 1.0 or fraction >= 1.0:
                last[0] = now
                self.catalog.update_job(job_id, progress=round(min(fraction, 1.0), 4))

        return report

    def summary_records(self, encoded: EncodedVideo) -> list[SummaryRecord]:
        records = []
        if encoded.summary is not None:
            records.append(SummaryRecord(encoded.summary.method, encoded.summary.num_tokens, encoded.summary.to_bytes()))
        if encoded.llm_summary is not None:
            s = encoded.llm_summary
            key = llm_summary_key(self.settings.llm_reranker, self.settings.llm_summary)
            records.append(SummaryRecord(s.method, s.num_tokens, s.to_bytes(), LLM_SPACE, key))
        return records

    # ----- decoding + encoding ------------------------------------------------------------
    def summary_builder(self) -> SummaryBuilder | None:
        s = self.settings
        if s.summary == "none":
            return None
        params = {"retain_ratio": s.summary_retain} if s.summary == "holitom" else {}
        return SummaryBuilder(s.summary, s.summary_chunk_frames, params)

    def encode_video(self, path: Path, content_hash: str, progress: ProgressFn | None = None) -> EncodedVideo:
        """Decode, segment and encode ``path``; thumbnails are written, the catalog is not touched."""
        s = self.settings
        backbone = self.encoder.backbone
        info = probe(path)
        times = sample_times(info.duration, s.sample_fps, s.max_frames)
        expected = len(times)
        sampled = iter_sampled_frames(path, s.sample_fps, s.max_frames, short_side=backbone.image_size, info=info)
        frames = prepare_frames(sampled, backbone)
        if s.frame_dedup > 0:
            frames = drop_repeated_frames(frames, backbone, s.frame_dedup)
        picker = UniformFramePicker(times, s.llm_frames) if self.llm is not None else None
        if picker is not None:
            frames = picker.tap(frames)
        summary = self.summary_builder()
        records: list[SegmentRecord] = []
        done = encoded = 0
        for batch in batch_groups(group_frames(frames, s.segment_frames), s.batch_segments):
            pixels = torch.stack([torch.stack([f.pixels for f in g.frames]) for g in batch])
            encoding = self.encoder.encode(pixels, with_tokens=summary is not None)
            for i, group in enumerate(batch):
                weights = torch.tensor([f.weight for f in group.frames], dtype=encoding.frame_embeddings.dtype)
                vector = weighted_segment_embedding(encoding.frame_embeddings[i], weights)
                thumb = f"{content_hash[:2]}/{content_hash}/{group.ordinal:05d}.jpg"
                save_thumbnail(group.middle.image, s.thumbnail_dir / thumb)
                records.append(
                    SegmentRecord(group.ordinal, group.frames[0].time, 0.0, len(group.frames), thumb, vector.cpu().numpy())
                )
                if summary is not None:
                    summary.add(encoding.patch_tokens[i], encoding.cls_attention[i], [f.time for f in group.frames])
                done += int(weights.sum())
                encoded += len(group.frames)
            if progress is not None:
                progress(min(done / expected, 0.999))
        ends = [r.start for r in records[1:]] + [max(info.duration, records[-1].start)]
        segments = [SegmentRecord(r.ordinal, r.start, e, r.frame_count, r.thumbnail, r.embedding) for r, e in zip(records, ends)]
        llm_summary, llm_note = self.llm_summary(picker.frames()) if picker is not None else (None, None)
        return EncodedVideo(info, segments, done, encoded, summary.build() if summary is not None else None, llm_summary, llm_note)

    def llm_summary(self, frames: list[PreparedFrame]) -> tuple[VideoSummary | None, str | None]:
        """The video LLM's summary of ``frames`` (HoliTom's outer-LLM step or VQToken in its visual space),
        or why there is none: a video LLM that cannot be loaded must not stop search ingestion."""
        s = self.settings
        try:
            model = self.llm.get()
        except LlmUnavailableError as exc:
            log.warning("no LLM summary: %s", exc)
            return None, f"no LLM summary ({exc})"
        params = {"retain_ratio": s.summary_retain} if s.llm_summary == "holitom" else {}
        images = np.stack([f.image for f in frames])
        return model.summarize(images, [f.time for f in frames], s.llm_summary, **params), None
