"""Ingestion of one video: decode -> sample -> segment -> encode -> catalog.

The catalog is updated in one transaction at the end (segments swapped in, video marked
done), so a job killed half-way leaves nothing half-written and can simply run again. While a
job runs, its worker holds a lease on it, renewed by a heartbeat (``indexer.leases``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from indexer.decode import DecodeError, SampledFrame, VideoInfo, iter_sampled_frames, probe, sample_times
from indexer.errors import TRANSIENT_ERRORS
from indexer.frames import PreparedFrame, UniformFramePicker, batch_groups, drop_repeated_frames, group_frames, prepare_frames
from indexer.leases import JobHeartbeat, LeaseLost, holder_is_dead, worker_identity
from indexer.media import sha256_file
from indexer.prefetch import Prefetcher
from indexer.segment_writer import SegmentWriter
from indexer.segments import SegmentBatchEncoder, SummaryBuilder, default_batch_segments
from indexer.spaces import space_settings
from models.factory import space_key
from models.encoders import SegmentEncoder
from models.rerankers.llava import LazyLlm, LlmUnavailableError, llm_summary_key
from models.rerankers.prefill import InnerMergeParams
from models.summary import VideoSummary
from search.catalog import Catalog, JobLeased, SegmentRecord, SummaryRecord
from search.media_paths import MediaRejected, PathNotAllowed, confine, is_regular_file, remove_empty_folders
from search.metrics import count_decode_error, observe_encoding
from search.settings import Settings
from search.space_store import SpaceInfo
from search.tables import LLM_SPACE, Job, SpaceState, Status, Video, utcnow

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
CLAIM_POLL_SECONDS = 0.5  # how often a job waiting for another one encoding the same content looks again


def embedding_key(encoder: SegmentEncoder) -> str:
    """Names the embedding space: vectors with different keys are not comparable."""
    return space_key(encoder.backbone.key, encoder.name)


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


EncoderLoader = Callable[[Settings], SegmentEncoder]


def _no_other_space(settings: Settings) -> SegmentEncoder:
    raise RuntimeError(f"this ingestor cannot load the model of another embedding space ({settings.model})")


def lazy_llm(settings: Settings) -> LazyLlm | None:
    """The video LLM ``VIDSEEK_LLM_RERANKER`` names (loaded on first use), or None when none is set."""
    if not settings.llm_reranker:
        return None
    return LazyLlm.of(settings.llm_reranker, settings.device, InnerMergeParams(settings.llm_inner_layer, settings.llm_inner_ratio))


class VideoIngestor:
    """Runs ingestion jobs against one catalog with one loaded encoder (and, when
    ``VIDSEEK_LLM_RERANKER`` is set, the video LLM that summarises videos for the llm reranker)."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder: SegmentEncoder, llm: LazyLlm | None = None,
                 load_encoder: EncoderLoader | None = None):
        """``load_encoder`` builds the encoder of another embedding space's settings (``for_space``)."""
        self.settings, self.catalog, self.encoder = settings, catalog, encoder
        self._load_encoder = load_encoder or _no_other_space
        self._spaces: dict[str, VideoIngestor] = {}
        self._spaces_lock = threading.Lock()
        self.key = embedding_key(encoder)
        device = encoder.backbone.device
        self.batch_segments = settings.batch_segments or default_batch_segments(device, settings.segment_frames)
        self.hardware_decode = device.type == "cuda"
        self.llm = llm if llm is not None else lazy_llm(settings)

    # ----- one job ------------------------------------------------------------------------
    def run_job(self, job_id: int, progress: ProgressFn | None = None, worker: str | None = None) -> Status:
        """Run job ``job_id`` to completion under ``worker``'s lease (default: this process,
        :func:`~indexer.leases.worker_identity`); returns the job's status.

        Bad input (not allowed, not a video, corrupt) fails the job and its video with the
        reason, at once. Transient errors (:data:`TRANSIENT_ERRORS`) propagate with nothing
        recorded as failed, for the task queue to retry; other unexpected errors mark the job
        failed and propagate.

        Raises:
            JobLeased: another live worker is running the job.
        """
        worker = worker or worker_identity()
        job = self._lease(job_id, worker)
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
            if isinstance(exc, DecodeError):
                count_decode_error(exc.kind)
            self._fail(job_id, str(exc))
            log.warning("video rejected", extra={"job": job_id, "path": job.path, "reason": str(exc),
                                                 "detail": getattr(exc, "detail", None)})
            return Status.failed
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")
            raise

    def _stale_before(self) -> datetime:
        return utcnow() - timedelta(seconds=self.settings.job_stale_seconds)

    def _lease(self, job_id: int, worker: str) -> Job | None:
        """Lease the job to ``worker``, taking it over at once from a holder proved dead (a pool
        process killed on this machine, whose task the broker redelivered)."""
        try:
            return self.catalog.start_job(job_id, worker, self._stale_before())
        except JobLeased as exc:
            if not holder_is_dead(exc.worker):
                raise
            log.warning("taking over the job of a dead worker", extra={"job": job_id, "dead_worker": exc.worker})
            return self.catalog.start_job(job_id, worker, self._stale_before(), dead_holder=exc.worker)

    # ----- which embedding space a job writes ---------------------------------------------
    def for_space(self, space: SpaceInfo) -> VideoIngestor:
        """The ingestor of embedding space ``space``: this one when it is its space, else one with
        that space's model (loaded on first use, then kept), sharing the catalog and the video LLM."""
        if space.key == self.key:
            return self
        with self._spaces_lock:
            ingestor = self._spaces.get(space.key)
            if ingestor is None:
                settings = space_settings(self.settings, space)
                ingestor = VideoIngestor(settings, self.catalog, self._load_encoder(settings), self.llm, self._load_encoder)
                self._spaces[space.key] = ingestor
            return ingestor

    def _ingest(self, job: Job, progress: ProgressFn | None, lease: JobHeartbeat) -> Status:
        """A re-indexing job (``job.space_key``) encodes its video into that space; an ingestion job
        into the active space (the catalog's; without one, this ingestor's), then into the space a
        re-index is building, if any -- so that a video ingested during a re-index ends up in both."""
        if job.space_key is not None:
            target = self.catalog.space(job.space_key)
            if target is None:
                raise MediaRejected(f"embedding space {job.space_key} is no longer registered")
            return self.for_space(target)._reindex(job, progress, lease)
        active = self.catalog.space_in(SpaceState.active)
        ingestor = self if active is None else self.for_space(active)
        status = ingestor._ingest_new(job, progress, lease)
        building = self.catalog.space_in(SpaceState.building)
        video_id = (self.catalog.get_job(job.id) or job).video_id
        if status is Status.done and building is not None and video_id is not None \
                and not self.catalog.segment_counts([video_id], building.key):
            try:
                self.for_space(building)._encode_into_space(video_id, lease)
            except (LeaseLost, *TRANSIENT_ERRORS):
                raise
            except Exception as exc:  # the video is indexed in the active space; `vidseek reindex` retries this
                log.warning("could not encode the video into the space being built",
                            extra={"video": video_id, "space": building.key, "error": f"{type(exc).__name__}: {exc}"})
        return status

    def _reindex(self, job: Job, progress: ProgressFn | None, lease: JobHeartbeat) -> Status:
        """Encode job ``job``'s video into this ingestor's space (its segments elsewhere untouched),
        then switch the active space if that was the last video missing from it."""
        assert job.video_id is not None, "a re-indexing job names its video"
        self.catalog.set_job_precision(job.id, self.encoder.backbone.precision.precision)
        count = self._encode_into_space(job.video_id, lease, self._progress_reporter(job.id, progress, lease))
        self.catalog.finish_job(job.id, Status.done, message=f"{count} segments in space {self.key}")
        if self.catalog.activate_if_complete(self.key):
            log.info("embedding space switched", extra={"space": self.key})
        return Status.done

    def _encode_into_space(self, video_id: int, lease: JobHeartbeat, progress: ProgressFn | None = None) -> int:
        """Encode the video's file into this ingestor's space; returns how many segments it got."""
        video = self.catalog.get_video(video_id)
        if video is None:
            raise MediaRejected(f"video {video_id} was deleted")
        path = confine(video.path, self.settings.allowed_media_roots)
        if not is_regular_file(path):
            raise DecodeError(f"{path.name} does not exist or is not a file", kind="missing")
        encoded = self.encode_video(path, video.content_hash, progress)
        lease.check()
        self.catalog.replace_space_segments(video_id, encoded.segments, self.key)
        log.info("video encoded into a space", extra={"video": video_id, "space": self.key, "segments": len(encoded.segments)})
        return len(encoded.segments)

    def _ingest_new(self, job: Job, progress: ProgressFn | None, lease: JobHeartbeat) -> Status:
        path = confine(job.path, self.settings.allowed_media_roots)
        if not is_regular_file(path):
            raise DecodeError(f"{path.name} does not exist or is not a file", kind="missing")
        content_hash = sha256_file(path)
        video = self._claim(job, path, content_hash, lease)
        if video is None:
            return Status.done
        previous = Path(video.path)
        self.catalog.mark_video_running(video.id, path)
        if previous != path:
            self._discard_upload(previous)  # an earlier upload of this content, now superseded
        self.catalog.set_job_precision(job.id, self.encoder.backbone.precision.precision)
        encoded = self.encode_video(path, content_hash, self._progress_reporter(job.id, progress, lease))
        info = encoded.info
        lease.check()
        self.catalog.replace_segments(
            video.id,
            encoded.segments,
            self.key,
            summaries=self.summary_records(encoded),
            keep_keys=tuple(self.catalog.registered_keys()),
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

    def _claim(self, job: Job, path: Path, content_hash: str, lease: JobHeartbeat) -> Video | None:
        """The video of ``content_hash``, claimed for this job to encode; None when there is nothing
        to encode (already indexed -- possibly by another job this one waited for -- and the job is
        finished). While another live job encodes the same content, this one waits for it rather
        than encoding it a second time; if that job fails on it, this one fails with its reason."""
        waited_for: int | None = None
        while True:
            video = self.catalog.get_or_create_video(path, content_hash, path.stat().st_size)
            if video.status is Status.done and video.embedding_key == self.key:
                self.catalog.attach_video(job.id, video.id)
                if Path(video.path) != path:
                    self._discard_upload(path)  # the content is indexed from another file
                note = f"already indexed (by job {waited_for})" if waited_for else "already indexed"
                self.catalog.finish_job(job.id, Status.done, message=note)
                return None
            if waited_for is not None and video.status is Status.failed:
                self.catalog.attach_video(job.id, video.id)
                raise MediaRejected(video.error or f"job {waited_for} failed on the same content")
            holder = self.catalog.claim_video(job.id, video.id, self._stale_before(), holder_is_dead)
            if holder is None:
                return video
            if waited_for != holder.job_id:
                waited_for = holder.job_id
                log.info("same content is being indexed by another job; waiting", extra={"job": job.id, "other": holder.job_id})
                self.catalog.set_job_progress(job.id, 0.0, f"waiting for job {holder.job_id}, which is indexing the same content")
            lease.check()
            time.sleep(CLAIM_POLL_SECONDS)

    def _discard_upload(self, path: Path) -> None:
        """Remove an uploaded file (and its upload folder) that no video refers to any more. Files
        outside the upload folder belong to the user and are never touched."""
        uploads = self.settings.upload_dir.resolve()
        try:
            resolved = path.resolve()
        except OSError:
            return
        if not resolved.is_relative_to(uploads) or resolved == uploads:
            return
        if self.catalog.videos_with_path(str(path)) or self.catalog.videos_with_path(str(resolved)):
            return
        resolved.unlink(missing_ok=True)
        remove_empty_folders(resolved.parent, uploads)
        log.info("duplicate upload removed", extra={"path": resolved.name})

    def _fail(self, job_id: int, reason: str) -> None:
        """Mark the job failed with ``reason``, and its video too once it is known -- unless it is a
        re-indexing job: the video keeps serving from the active space."""
        self.catalog.finish_job(job_id, Status.failed, error=reason)
        job = self.catalog.get_job(job_id)
        if job is not None and job.video_id is not None and job.space_key is None:
            self.catalog.fail_video(job.video_id, reason)

    def _progress_reporter(self, job_id: int, callback: ProgressFn | None, lease: JobHeartbeat) -> ProgressFn:
        last = [0.0]

        def report(fraction: float) -> None:
            lease.check()
            if callback is not None:
                callback(fraction)
            now = time.monotonic()
            if now - last[0] >= 1.0 or fraction >= 1.0:
                last[0] = now
                self.catalog.set_job_progress(job_id, fraction)

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

    def sampled_frames(self, path: Path, info: VideoInfo) -> Prefetcher[SampledFrame]:
        """``path``'s sampled frames, decoded and resized on a producer thread that runs up to one
        batch plus one segment ahead of the encoder (``with`` it: leaving the block stops it)."""
        s = self.settings
        size = self.encoder.backbone.image_size

        def decode() -> Iterator[SampledFrame]:
            return iter_sampled_frames(path, s.sample_fps, s.max_frames, size, info, s.decode, self.hardware_decode,
                                       s.resolved_decode_workers)

        depth = (self.batch_segments + 1) * s.segment_frames
        return Prefetcher(decode, depth, name=f"vidseek-decode-{path.name}")

    def encode_video(self, path: Path, content_hash: str, progress: ProgressFn | None = None) -> EncodedVideo:
        """Decode, segment and encode ``path``; thumbnails are written, the catalog is not touched."""
        s = self.settings
        backbone = self.encoder.backbone
        info = probe(path)
        times = sample_times(info.duration, s.sample_fps, s.max_frames)
        picker = UniformFramePicker(times, s.llm_frames) if self.llm is not None else None
        summary = self.summary_builder()
        encoder = SegmentBatchEncoder(self.encoder, summary)
        writer = SegmentWriter(s.thumbnail_dir, content_hash, info.duration)
        with self.sampled_frames(path, info) as sampled:
            frames = prepare_frames(sampled, backbone)
            if s.frame_dedup > 0:
                frames = drop_repeated_frames(frames, backbone, s.frame_dedup)
            if picker is not None:
                frames = picker.tap(frames)
            for batch in batch_groups(group_frames(frames, s.segment_frames), self.batch_segments):
                started = time.perf_counter()
                encoded_batch = encoder.encode(batch)
                observe_encoding(sum(len(group.frames) for group in batch), time.perf_counter() - started)
                writer.add(encoded_batch)
                if progress is not None:
                    progress(min(writer.frames_sampled / len(times), 0.999))
        segments = writer.finish()
        llm_summary, llm_note = self.llm_summary(picker.frames()) if picker is not None else (None, None)
        summarized = summary.build() if summary is not None else None
        return EncodedVideo(info, segments, writer.frames_sampled, writer.frames_encoded, summarized, llm_summary, llm_note)

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
