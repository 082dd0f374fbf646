"""``vidseek eval``: retrieval quality and visual cost of encoder configurations, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from indexer.evaluation.annotations import AnnotationError, load_annotations, resolve_videos
from indexer.evaluation.configs import MODIFIERS, EvalError, check_rerankers, eval_rerankers, parse_encoder_config
from models.registry import ENCODERS
from models.weights import RANDOM_WEIGHTS
from search.settings import Settings, SettingsError

# CLIP4Clip's and TempMe's MSR-VTT protocol: 1 frame per second, at most 12 frames, uniformly.
DEFAULT_MAX_FRAMES = 12


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``vidseek`` command's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="text-video retrieval metrics (R@1/5/10, MdR, MnR, R-Sum) and visual cost per encoder configuration",
        description="Ingest an annotated video set once per encoder configuration (each in its own "
        "temporary catalog) and report CLIP4Clip-style retrieval metrics in both directions next to "
        "tokens, visual GFLOPs and frames/s per video. Model and weights come from VIDSEEK_MODEL / "
        "VIDSEEK_PRETRAINED (a local checkpoint path works offline).",
    )
    p.add_argument("--videos", type=Path, required=True, help="folder holding the videos (searched recursively)")
    p.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="MSR-VTT CSV (video_id,sentence; e.g. MSRVTT_JSFUSION_test.csv) or JSON (MSRVTT_data.json), "
        "DiDeMo test_data.json, ActivityNet val_1.json",
    )
    p.add_argument("--split", default=None, help="MSR-VTT JSON only: keep videos of this split (e.g. test)")
    p.add_argument("--encoders", type=_names, default=["full"], help=f"encoders ({', '.join(ENCODERS)}), each optionally +{'+'.join(MODIFIERS)}, "
                   "e.g. full,tempme,tempme+bvllm-dedup (default: full)")
    p.add_argument("--rerank", type=_names, default=["none"], help=f"rerankers scoring every configuration, of {', '.join(eval_rerankers())} (default: none)")
    p.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="frames per video, uniformly (default 12)")
    p.add_argument(
        "--segment-frames", type=int, default=None, help="frames per segment (default: --max-frames, one segment per video)"
    )
    p.add_argument("--out", type=Path, default=Path("vidseek-eval"), help="folder for report.json and r1_vs_gflops.png")
    p.add_argument("--work-dir", type=Path, default=None, help="where the temporary catalogs go (default: system temp)")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    try:
        base = settings.with_overrides(max_frames=args.max_frames, segment_frames=args.segment_frames or args.max_frames)
        check_rerankers(args.rerank)
        encoders = [parse_encoder_config(name, base) for name in args.encoders]
        annotations = load_annotations(args.annotations, args.split)
        videos = resolve_videos(annotations.video_ids, args.videos)
    except (SettingsError, EvalError, AnnotationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if base.pretrained == RANDOM_WEIGHTS:
        print("warning: VIDSEEK_PRETRAINED=random -- the metrics will be chance level", file=sys.stderr)
    # imported here: the harness loads torch, open_clip and the pipeline (seconds), which the
    # other commands and a bad argument need not pay
    from indexer.evaluation.harness import EvalRequest, run_eval

    request = EvalRequest(base, annotations, args.annotations, videos, encoders, args.rerank, args.work_dir)
    try:
        run = run_eval(request)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # matplotlib takes half a second to load
    from indexer.evaluation.report import format_table, plot_r1_vs_gflops, write_json

    print(format_table(run))
    report = write_json(run, args.out / "report.json")
    plot = plot_r1_vs_gflops(run, args.out / "r1_vs_gflops.png")
    print(f"report: {report}\nplot:   {plot}")
    return 0
