"""Ingestion of HD video: decoding alone and the whole pipeline, exact against fast decoding.

For each clip -- a generated 60-second 1080p30 H.264 clip with B-frames and motion (cached
outside the repository), plus the real clips in ``../shared/media`` when that folder exists --
and each configuration, side by side in one process, taking turns:

* decode only: ``indexer.decode.iter_sampled_frames`` at ``--sample-fps``, ``exact`` (every
  frame decoded: today) against ``fast`` (non-reference frames and deblocking skipped, and seeks
  over the frames between a sample and the keyframe before the next one), both in one pass, and
  ``fast spans`` (fast, on ``--decode-workers`` decoders side by side over spans cut at
  keyframes, ``indexer.parallel_decode``); ``fast spans, no jumps`` is the same without the seeks
  (the baseline of those);
* the whole ingestion (decode -> sample -> encode -> catalog, one job through
  ``VideoIngestor.run_job`` into a fresh SQLite catalog): ``today`` (exact decoding in the
  encoder's thread, as before the producer thread existed), ``exact``, ``fast`` (decoding in one
  pass on the producer thread, overlapping the encoder) and ``fast spans`` (the producer thread
  fed by ``--decode-workers`` decoders), with and without jumps.

    python -m benchmarks.ingest_bench --model ViT-B-32 --pretrained random

Reported: sampled frames/s and video-seconds/s (wall), the split of the wall time between the
encoder's forward passes and the rest (waiting for frames, pixel preparation, thumbnails,
catalog), peak RSS of the process during the run (VmHWM reset before each), the frames decoded
per sample, and the largest distance between a sample's instant and its frame's timestamp, in
source frame periods. *CPU s* is the process's CPU time in the run (every thread: decoders, the
encoder's threads, FFmpeg's); a job cannot take less wall time than its CPU seconds over the
machine's cores, so *× today at most* (today's wall time over that floor) is the most a mode's
work allows here however well decoding and encoding overlap (OpenMP threads spinning while they
wait count as CPU time too, so the floor is a little high when the encoder waits).
Random weights are fine for speed; they say nothing about answer quality.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import Column, machine_description, markdown_table, process_peak_rss_bytes
import indexer.decode as decode_module
from indexer.decode import DecodeStats, SampledFrame, VideoInfo, iter_sampled_frames, probe, sample_times
from indexer.pipeline import VideoIngestor
from indexer.samples import write_video
from indexer.segments import SegmentBatchEncoder
from indexer.service import build_runtime
from search.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# ../shared/media beside the checkout (a git worktree may sit a level deeper: the nearest one up)
SHARED_MEDIA = next((d / "shared" / "media" for d in REPO.parents if (d / "shared" / "media").is_dir()),
                    REPO.parent / "shared" / "media")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidseek-bench"
SPANS = "fast spans"
NO_JUMPS = ", no jumps"
DECODE_MODES = ("exact", "fast", SPANS + NO_JUMPS, SPANS)
INGEST_MODES = ("today", "exact", "fast", SPANS + NO_JUMPS, SPANS)


def decode_setting(mode: str, workers: int) -> tuple[str, int]:
    """A benchmark mode -> (``VIDSEEK_DECODE``, ``VIDSEEK_DECODE_WORKERS``)."""
    if mode.startswith(SPANS):
        return "fast", workers
    return ("exact" if mode == "today" else mode), 1


@contextlib.contextmanager
def jumps_for(mode: str) -> Iterator[None]:
    """Fast decoding's seeks over frames no sample needs, off for the ``, no jumps`` modes (benchmark only)."""
    if not mode.endswith(NO_JUMPS):
        yield
        return
    jump_min_frames = decode_module.JUMP_MIN_FRAMES
    decode_module.JUMP_MIN_FRAMES = 10**9
    try:
        yield
    finally:
        decode_module.JUMP_MIN_FRAMES = jump_min_frames


# ----- the generated clip -----------------------------------------------------------------------
def _motion_painter(width: int, height: int):
    """A textured scene panning diagonally, a bright disc crossing it and fine grain that changes
    every frame: motion the encoder must code with real residuals, like camera footage."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((2 * width, 2 * height), Image.BICUBIC))
    grain = rng.integers(-6, 7, (8, height, width, 1), dtype=np.int16)

    def paint(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        i = round(t * 30)
        x0, y0 = (7 * i) % width, (3 * i) % height
        img = texture[y0 : y0 + height, x0 : x0 + width].astype(np.int16) + grain[i % len(grain)]
        cx, cy = width * (0.5 + 0.4 * np.sin(t)), height * (0.5 + 0.4 * np.cos(0.7 * t))
        disc = slice(max(0, int(cy) - 80), int(cy) + 80), slice(max(0, int(cx) - 80), int(cx) + 80)
        img[disc] = 240
        return np.clip(img, 0, 255).astype(np.uint8)

    return paint


def generated_clip(cache_dir: Path, seconds: int = 60, fps: int = 30, size: tuple[int, int] = (1920, 1080),
                   keyframe_every: float = 0.0) -> Path:
    """The synthetic HD clip, encoded once (x264 ``veryfast``: 3 pyramid B-frames) and cached; a
    keyframe every ``keyframe_every`` seconds (as phones and cameras write), or where x264 puts
    them (scene cuts; here 1-8 s apart) when 0."""
    width, height = size
    gop = f"_key{keyframe_every:g}s" if keyframe_every else ""
    path = cache_dir / f"motion_{width}x{height}_{fps}fps_{seconds}s{gop}.mp4"
    if not path.exists():
        print(f"generating {path} (once) ...", flush=True)
        write_video(path, _motion_painter(width, height), seconds, fps=fps, size=size,
                    keyframe_every=round(keyframe_every * fps))
    return path


# ----- measurements -----------------------------------------------------------------------------
def _reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def max_sample_distance(frames: list[SampledFrame], times: np.ndarray, fps: float) -> float:
    """Largest gap between a sample's instant (the first instant at or after its frame) and its
    frame's timestamp, in source frame periods."""
    gaps = []
    for f in frames:
        k = min(int(np.searchsorted(times, f.time - 1e-6, side="left")), len(times) - 1)
        gaps.append(abs(times[k] - f.time))
    return max(gaps, default=0.0) * fps


@dataclass
class DecodeRun:
    clip: str
    mode: str
    seconds: float
    samples: int
    frames_per_second: float
    video_seconds_per_second: float
    max_distance_frames: float
    decoded_per_sample: float
    peak_rss_mib: float
    cpu_seconds: float


@dataclass
class IngestRun:
    clip: str
    mode: str
    seconds: float
    encode_seconds: float
    other_seconds: float
    samples: int
    cpu_seconds: float
    frames_per_second: float
    video_seconds_per_second: float
    peak_rss_mib: float


def decode_once(path: Path, info: VideoInfo, mode: str, sample_fps: float, hardware: bool = False,
                workers: int = 2) -> DecodeRun:
    _reset_peak_rss()
    decode, decode_workers = decode_setting(mode, workers)
    stats = DecodeStats()
    with jumps_for(mode):
        start, cpu_start = time.perf_counter(), time.process_time()
        frames = list(iter_sampled_frames(path, sample_fps, 3600, 224, info, decode, hardware, decode_workers, stats))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    times = sample_times(info.duration, sample_fps, 3600)
    return DecodeRun(
        path.name, mode, seconds, len(frames), len(frames) / seconds, info.duration / seconds,
        max_sample_distance(frames, times, info.fps), stats.frames / max(len(frames), 1),
        (process_peak_rss_bytes() or 0) / 2**20, cpu_seconds,
    )


class _TodayIngestor(VideoIngestor):
    """Ingestion as it ran before the producer thread: exact decoding, in the encoder's thread."""

    def sampled_frames(self, path: Path, info: VideoInfo):
        s = self.settings
        frames = iter_sampled_frames(path, s.sample_fps, s.max_frames, self.encoder.backbone.image_size, info, "exact")
        return contextlib.nullcontext(frames)


@contextlib.contextmanager
def encoder_clock() -> Iterator[list[float]]:
    """Accumulates the seconds spent in ``SegmentBatchEncoder.encode`` (the ViT's forward passes)."""
    spent = [0.0]
    original = SegmentBatchEncoder.encode

    def timed(self, batch):
        start = time.perf_counter()
        try:
            return original(self, batch)
        finally:
            spent[0] += time.perf_counter() - start

    SegmentBatchEncoder.encode = timed
    try:
        yield spent
    finally:
        SegmentBatchEncoder.encode = original


def ingest_once(path: Path, info: VideoInfo, mode: str, base: Settings, runtime_cache: dict, workers: int = 2) -> IngestRun:
    with tempfile.TemporaryDirectory(prefix=f"ingest-{mode.replace(' ', '-')}-") as tmp:
        decode, decode_workers = decode_setting(mode, workers)
        settings = base.with_overrides(data_dir=Path(tmp), decode=decode, decode_workers=decode_workers)
        runtime = build_runtime(settings, backbone=runtime_cache.get("backbone"))
        runtime_cache["backbone"] = runtime.backbone
        ingestor_type = _TodayIngestor if mode == "today" else VideoIngestor
        ingestor = ingestor_type(settings, runtime.catalog, runtime.encoder)
        job = runtime.catalog.create_job(path)
        _reset_peak_rss()
        with encoder_clock() as spent, jumps_for(mode):
            start, cpu_start = time.perf_counter(), time.process_time()
            ingestor.run_job(job.id)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = (process_peak_rss_bytes() or 0) / 2**20
        done = runtime.catalog.get_job(job.id)
        if done.error:
            raise RuntimeError(f"{path.name} ({mode}): {done.error}")
        samples = runtime.catalog.get_video(done.video_id).frames_sampled
        runtime.catalog.dispose()
    return IngestRun(path.name, mode, seconds, spent[0], seconds - spent[0], samples, cpu_seconds, samples / seconds,
                     info.duration / seconds, peak)


def _median_run(runs: list, cls):
    """One row per (clip, mode): medians of the timed fields over the repeats, the worst distance."""
    first = asdict(runs[0])
    row = {}
    for key, value in first.items():
        values = [asdict(r)[key] for r in runs]
        if key == "max_distance_frames" or key == "peak_rss_mib":
            row[key] = max(values)
        elif isinstance(value, float):
            row[key] = statistics.median(values)
        else:
            row[key] = value
    return cls(**row)


DECODE_COLUMNS = (
    Column("clip", "clip"), Column("mode", "decode"), Column("samples", "samples"),
    Column("frames_per_second", "sampled frames/s", "{:.1f}"), Column("video_seconds_per_second", "video-s/s", "{:.1f}"),
    Column("speedup", "× exact", "{:.2f}"), Column("max_distance_frames", "max dist (frames)", "{:.1f}"),
    Column("decoded_per_sample", "decoded frames/sample", "{:.1f}"), Column("cpu_seconds", "CPU s", "{:.2f}"),
    Column("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
)
INGEST_COLUMNS = (
    Column("clip", "clip"), Column("mode", "ingestion"), Column("samples", "samples"),
    Column("seconds", "wall s", "{:.2f}"), Column("encode_seconds", "encoder s", "{:.2f}"),
    Column("other_seconds", "rest s", "{:.2f}"),
    Column("frames_per_second", "sampled frames/s", "{:.1f}"), Column("video_seconds_per_second", "video-s/s", "{:.1f}"),
    Column("speedup", "× today", "{:.2f}"), Column("cpu_seconds", "CPU s", "{:.2f}"),
    Column("ceiling", "× today at most (CPU s / cores)", "{:.2f}"), Column("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--encoder", default="tempme")
    parser.add_argument("--sample-fps", type=float, default=1.0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda also decodes on NVDEC where it can)")
    parser.add_argument("--batch-segments", type=int, default=0, help="VIDSEEK_BATCH_SEGMENTS (0 = auto)")
    parser.add_argument("--seconds", type=int, default=60, help="length of the generated 1080p clip")
    parser.add_argument("--keyframe-every", type=float, default=0.0,
                        help="seconds between the generated clip's keyframes (0: where x264 puts them)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the generated clip is kept")
    parser.add_argument("--media", type=Path, default=SHARED_MEDIA, help="folder of real clips (skipped if absent)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ingest", action="store_true", help="decoding only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=2, help="decoders of the 'fast spans' rows")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    clips = [generated_clip(args.cache_dir, args.seconds, keyframe_every=args.keyframe_every)]
    if args.media.is_dir():
        clips += sorted(p for p in args.media.iterdir() if p.suffix in (".mp4", ".mpg", ".mkv", ".mov", ".webm"))
    infos = {p: probe(p) for p in clips}
    base = Settings(model=args.model, pretrained=args.pretrained, model_config_dir=args.model_config_dir,
                    encoder=args.encoder, device=args.device, sample_fps=args.sample_fps, batch_segments=args.batch_segments,
                    media_roots=tuple(sorted({p.parent for p in clips})), log_level="WARNING", log_format="text")

    decode_runs: dict[tuple[str, str], list[DecodeRun]] = {}
    ingest_runs: dict[tuple[str, str], list[IngestRun]] = {}
    runtime_cache: dict = {}
    hardware = args.device.startswith("cuda")
    for path in clips:  # warm-up: page cache, model load, first-call allocations
        decode_once(path, infos[path], "fast", args.sample_fps, hardware)
    if not args.no_ingest:
        ingest_once(clips[0], infos[clips[0]], "fast", base, runtime_cache)
    for _ in range(args.repeats):  # round-robin, so load from other processes falls on every mode alike
        for path in clips:
            for mode in DECODE_MODES:
                decode_runs.setdefault((path.name, mode), []).append(
                    decode_once(path, infos[path], mode, args.sample_fps, hardware, args.decode_workers))
            for mode in () if args.no_ingest else INGEST_MODES:
                ingest_runs.setdefault((path.name, mode), []).append(
                    ingest_once(path, infos[path], mode, base, runtime_cache, args.decode_workers))

    decode_rows = [asdict(_median_run(runs, DecodeRun)) for runs in decode_runs.values()]
    for row in decode_rows:
        ref = next(r for r in decode_rows if r["clip"] == row["clip"] and r["mode"] == "exact")
        row["speedup"] = row["video_seconds_per_second"] / ref["video_seconds_per_second"]
    ingest_rows = [asdict(_median_run(runs, IngestRun)) for runs in ingest_runs.values()]
    for row in ingest_rows:
        ref = next(r for r in ingest_rows if r["clip"] == row["clip"] and r["mode"] == "today")
        row["speedup"] = row["video_seconds_per_second"] / ref["video_seconds_per_second"]
        row["ceiling"] = ref["seconds"] / (row["cpu_seconds"] / (os.cpu_count() or 1))

    machine = machine_description()
    backbone = runtime_cache.get("backbone")
    precision = backbone.precision.precision if backbone is not None else f"precision {base.precision}"
    print(f"\n{machine['cpu']} ({machine['capability']}), {machine['cores']} cores, {args.threads} torch threads, "
          f"load {machine['load_1min']:.1f}; {args.model} ({args.pretrained} weights), encoder {args.encoder} {precision}, "
          f"{args.sample_fps:g} sample/s, device {args.device}, median of {args.repeats}")
    print("\nDecode only\n" + markdown_table(DECODE_COLUMNS, decode_rows))
    if ingest_rows:
        print("\nWhole ingestion (decode -> sample -> encode -> catalog)\n" + markdown_table(INGEST_COLUMNS, ingest_rows))
    result = {"machine": machine, "decode": decode_rows, "ingest": ingest_rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
