"""Precision side by side (``python -m benchmarks.token_reduction --precision``): open_clip's own fp32
image forward (the baseline), full CLIP and TempMe at fp32, at ``auto`` (``VIDSEEK_PRECISION``'s
choice on this machine), at bf16 explicitly when ``auto`` is not bf16 (so the bf16 path's cosines
show also on a machine without bf16 units, where it is slow), and at fp16 on CUDA when present.

Every row: frames/s of the whole call, its ratio to open_clip's fp32 forward, and the min/mean
cosine of its segment embeddings to the same encoder's in fp32. One process, the same frames,
weights cast once per precision at load, calls interleaved (:func:`benchmarks.common.interleaved_timings`).

A second table times TempMe fp32 with ToMe's own size-weighted average (``tome/merge.py``'s
``merge_wavg``: two merges, of ``x * size`` and of ``size``) against vidseek's
(:func:`models.merging.merge_wavg`: one merge of ``C + 1`` channels, float32 sums), side by side
over the same backbone, with the cosine between their outputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

import models.tempme as tempme_module
from benchmarks.common import Column, interleaved_timings, markdown_table
from models.backbone import ClipBackbone
from models.encoders import FullClipEncoder
from models.factory import load_backbone
from models.precision import BF16, FP16, FP32, detect_cpu_capability
from models.tempme import TempMeEncoder

COLUMNS = (
    Column("call", "call"),
    Column("precision", "precision"),
    Column("frames_per_second", "frames/s", "{:.2f}"),
    Column("ratio", "× open_clip fp32", "{:.2f}"),
    Column("frames_per_second_best", "best frames/s", "{:.2f}"),
    Column("cos_mean", "cos to fp32 mean", "{:.5f}"),
    Column("cos_min", "cos to fp32 min", "{:.5f}"),
)


@dataclass
class PrecisionRow:
    call: str
    precision: str
    frames_per_second: float
    ratio: float
    frames_per_second_best: float
    cos_mean: float | None = None
    cos_min: float | None = None


def tome_merge_wavg(merge, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's ``merge_wavg`` (facebookresearch/ToMe ``tome/merge.py``), the reference for the
    bookkeeping comparison: two merges, in ``x``'s dtype."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


@contextmanager
def tome_weighted_average() -> Iterator[None]:
    """TempMe runs with :func:`tome_merge_wavg` inside the block (benchmark only)."""
    ours = tempme_module.merge_wavg
    tempme_module.merge_wavg = tome_merge_wavg
    try:
        yield
    finally:
        tempme_module.merge_wavg = ours


def _cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)
    return float(cos.mean()), float(cos.min())


def _synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())[0]


def precision_report(args: argparse.Namespace, pixels: torch.Tensor, before_each: Callable[[], None]) -> dict[str, Any]:
    """Both tables for pixels ``[S, T, 3, H, W]`` (float32, normalised)."""
    cpu = detect_cpu_capability()
    load = lambda precision, device="cpu": load_backbone(  # noqa: E731
        args.model, args.pretrained, device, args.model_config_dir, precision
    )
    backbones: dict[str, ClipBackbone] = {FP32: load(FP32)}
    auto = load("auto")
    labels = {FP32: "fp32", "auto": f"auto = {auto.precision.precision}"}
    backbones["auto"] = auto
    if auto.precision.precision != BF16:
        backbones[BF16] = load(BF16)
        labels[BF16] = "bf16 (explicit)"
    if torch.cuda.is_available():
        backbones[FP16] = load(FP16, "cuda")
        labels[FP16] = "fp16 (CUDA)"
    frames = pixels.shape[0] * pixels.shape[1]
    inputs = {name: pixels.to(b.device, b.dtype) for name, b in backbones.items()}
    base = backbones[FP32]

    @torch.inference_mode()
    def open_clip_forward() -> torch.Tensor:
        return base.model.encode_image(inputs[FP32].flatten(0, 1))

    encoders = {("full", n): FullClipEncoder(b) for n, b in backbones.items()}
    encoders |= {("tempme", n): TempMeEncoder(b) for n, b in backbones.items()}
    calls: dict[str, Callable[[], Any]] = {"open_clip": open_clip_forward}
    for (method, name), encoder in encoders.items():
        calls[f"{method} {name}"] = _synced(lambda e=encoder, p=inputs[name]: e.encode(p), backbones[name].device)
    outputs = {key: encoder.encode(inputs[key[1]]).embeddings for key, encoder in encoders.items()}
    timings = interleaved_timings(calls, args.precision_repeats, args.warmup, before_each)
    median = {k: sorted(t.seconds)[len(t.seconds) // 2] for k, t in timings.items()}
    baseline = median["open_clip"]
    rows = [PrecisionRow("open_clip encode_image", "fp32", frames / baseline, 1.0, frames / min(timings["open_clip"].seconds))]
    for (method, name) in encoders:
        key = f"{method} {name}"
        cos_mean, cos_min = _cosines(outputs[(method, name)], outputs[(method, FP32)])
        rows.append(PrecisionRow(f"{method} (vidseek)", labels[name], frames / median[key], baseline / median[key],
                                 frames / min(timings[key].seconds), cos_mean, cos_min))

    tempme = TempMeEncoder(base)
    with tome_weighted_average():
        reference = tempme.encode(inputs[FP32]).embeddings

    def with_tome():
        with tome_weighted_average():
            return tempme.encode(inputs[FP32])

    book = interleaved_timings({"tome": with_tome, "vidseek": lambda: tempme.encode(inputs[FP32])},
                               args.precision_repeats, args.warmup, before_each)
    book_median = {k: sorted(t.seconds)[len(t.seconds) // 2] for k, t in book.items()}
    cos_mean, cos_min = _cosines(outputs[("tempme", FP32)], reference)
    return {
        "cpu_capability": cpu.describe(),
        "auto": auto.precision.describe(),
        "frames": frames,
        "rows": [asdict(r) for r in rows],
        "bookkeeping": {
            "tome_merge_wavg_frames_per_second": frames / book_median["tome"],
            "vidseek_merge_wavg_frames_per_second": frames / book_median["vidseek"],
            "speedup": book_median["tome"] / book_median["vidseek"],
            "cos_mean": cos_mean,
            "cos_min": cos_min,
        },
        "timings": {k: asdict(t) for k, t in {**timings, **{f"bookkeeping {k}": t for k, t in book.items()}}.items()},
    }


def render_precision(report: dict[str, Any]) -> str:
    book = report["bookkeeping"]
    has_bf16 = "no bf16 units" not in report["cpu_capability"]
    lines = [
        f"CPU capability: {report['cpu_capability']}; VIDSEEK_PRECISION=auto chooses {report['auto']}",
        "",
        markdown_table(COLUMNS, report["rows"]),
        "",
        f"frames/s: {report['frames']} frames per call, median of the repeats; × open_clip fp32: the median time of "
        "open_clip's own fp32 encode_image over the same frames divided by the call's; cos: segment embeddings vs "
        "the same encoder in fp32.",
    ]
    if not has_bf16:
        lines.append("This CPU has no bf16 units (no AMX, no AVX512-BF16): auto stays fp32, and the explicit bf16 "
                     "rows run emulated bf16 -- they show the bf16 path's cosines, not its speed on an AMX machine.")
    lines += [
        "",
        "TempMe fp32 bookkeeping, side by side: ToMe's merge_wavg (two merges) vs vidseek's (one merge of C + 1 "
        "channels, float32 sums):",
        f"  {book['tome_merge_wavg_frames_per_second']:.2f} vs {book['vidseek_merge_wavg_frames_per_second']:.2f} "
        f"frames/s ({book['speedup']:.3f}x); cosine of the segment embeddings mean {book['cos_mean']:.7f}, "
        f"min {book['cos_min']:.7f}",
    ]
    return "\n".join(lines)
