"""An :class:`~indexer.evaluation.harness.EvalRun` as JSON, as a console table, and as a plot of
text-to-video R@1 against visual GFLOPs per video (matplotlib, PNG)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.figure import Figure

from indexer.evaluation.harness import ConfigResult, EvalRun

VIDEO_EMBEDDING = (
    "span-weighted mean of the stored segment embeddings, L2-normalised; one segment per video "
    "when segment_frames >= max_frames, which is CLIP4Clip's meanP"
)
FLOPS_CONVENTION = "torch.utils.flop_counter.FlopCounterMode: a multiply-add counts 2 FLOPs (fvcore tables count 1)"


def _finite(value: float) -> float | None:
    """JSON has no NaN: unmeasurable rates become null."""
    return value if math.isfinite(value) else None


def result_dict(result: ConfigResult) -> dict[str, object]:
    efficiency = {k: _finite(v) if isinstance(v, float) else v for k, v in result.efficiency.as_dict().items()}
    return {
        "name": result.name,
        "encoder": result.encoder,
        "rerank": result.rerank,
        "settings": dict(result.settings),
        **result.metrics.as_dict(),
        "efficiency": efficiency,
    }


def run_dict(run: EvalRun) -> dict[str, object]:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "annotations": {
            "path": str(run.annotations),
            "format": run.annotation_format,
            "videos": run.videos,
            "captions": run.captions,
        },
        "model": run.model,
        "weights": run.weights,
        "tempme_weights": run.tempme_weights,
        "sampling": dict(run.sampling),
        "video_embedding": VIDEO_EMBEDDING,
        "flops": FLOPS_CONVENTION,
        "configurations": [result_dict(r) for r in run.results],
    }


def write_json(run: EvalRun, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_dict(run), indent=2) + "\n", encoding="utf-8")
    return path


def format_table(run: EvalRun) -> str:
    """Configurations side by side, one row each: both directions, R-Sum and the visual cost."""
    header = (
        f"{'configuration':<30} {'t2v R@1':>7} {'R@5':>6} {'R@10':>6} {'MdR':>5} {'MnR':>6}  "
        f"{'v2t R@1':>7} {'R@5':>6} {'R@10':>6} {'MdR':>5} {'MnR':>6}  {'R-Sum':>6}  "
        f"{'tokens/v':>8} {'GFLOPs/v':>9} {'enc fps':>8} {'ingest fps':>10}"
    )
    lines = [
        f"{run.videos} videos, {run.captions} captions ({run.annotation_format}); {run.model} weights {run.weights}",
        header,
        "-" * len(header),
    ]
    for r in run.results:
        t, v, e = r.metrics.text_to_video, r.metrics.video_to_text, r.efficiency
        lines.append(
            f"{r.name:<30} {t.r1:7.1f} {t.r5:6.1f} {t.r10:6.1f} {t.median_rank:5.1f} {t.mean_rank:6.1f}  "
            f"{v.r1:7.1f} {v.r5:6.1f} {v.r10:6.1f} {v.median_rank:5.1f} {v.mean_rank:6.1f}  {r.metrics.rsum:6.1f}  "
            f"{e.tokens_per_video:8.0f} {e.gflops_per_video:9.2f} {e.encode_fps:8.1f} {e.ingest_fps:10.1f}"
        )
    return "\n".join(lines)


def plot_r1_vs_gflops(run: EvalRun, path: Path) -> Path:
    """PNG: one labelled point per configuration, visual GFLOPs per video (x) against R@1 (y)."""
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    for result in run.results:
        x, y = result.efficiency.gflops_per_video, result.metrics.text_to_video.r1
        axes.scatter([x], [y], s=36)
        axes.annotate(result.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel("visual GFLOPs per video (FlopCounterMode)")
    axes.set_ylabel("text-to-video R@1 (%)")
    axes.set_title(f"{run.annotations.name}: {run.videos} videos, {run.model}", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(0.15)
    axes.set_xlim(left=0)  # savings read as proportions
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
