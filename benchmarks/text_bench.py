"""One text query's encoder latency, side by side in one process: open_clip's own ``encode_text``
in fp32 over the full context (77 tokens) against vidseek's text path (``ClipBackbone.encode_text``:
the causal tower cut at the batch's last EOT token) in fp32 and at ``VIDSEEK_PRECISION=auto``, and on ONNX Runtime (``VIDSEEK_TEXT_RUNTIME=onnx``, the
float32 graph, and ``onnx-int8``, int8 matrices; ``models/text_onnx.py``), each ONNX graph also
without its row cuts (every row through every block: the graphs before the start token's keys
and values were stored and the last block ran on the EOT row alone).

One thread by default, as in an API process (``vidseek serve`` runs ``OMP_NUM_THREADS=1`` workers).
Prints the CPU model and capability; reports p50/p99 per call and the ratio of the medians to
open_clip fp32, and how far each embedding lies from open_clip fp32 (min cosine).

    PYTHONPATH=. python benchmarks/text_bench.py --queries 200
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Column, distinct_queries, latency_percentiles, machine_description, markdown_table
from models.factory import load_backbone
from models.precision import FP32
from models.precision import detect_cpu_capability
from models.text_onnx import (ONNX, ONNX_INT8, attach_text_runtime, export_text_tower, int8_reduce_range, leading_token,
                              open_session, quantize_int8)
from models.weights import RANDOM_WEIGHTS


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=RANDOM_WEIGHTS)
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=200, help="distinct queries, each timed once per call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = lambda precision: load_backbone(args.model, args.pretrained, "cpu", args.model_config_dir, precision)  # noqa: E731
    fp32, auto, onnx, onnx_int8 = load(FP32), load("auto"), load(FP32), load(FP32)
    attach_text_runtime(onnx, ONNX)
    attach_text_runtime(onnx_int8, ONNX_INT8)
    queries = distinct_queries(args.queries)
    first = leading_token(fp32.tokenizer)
    every_row = export_text_tower(fp32.model, first, row_cuts=False)
    every_row_fp32 = open_session(every_row, False, first, args.threads)
    every_row_int8 = open_session(quantize_int8(every_row, int8_reduce_range(detect_cpu_capability())), True, first, args.threads)

    @torch.inference_mode()
    def open_clip_fp32(text: str) -> torch.Tensor:
        return F.normalize(fp32.model.encode_text(fp32.tokenizer([text])).float(), dim=-1)

    def through(tower) -> Callable[[str], torch.Tensor]:
        return lambda text: F.normalize(tower(fp32.tokenizer([text])).float(), dim=-1)

    calls = [  # (call, precision, fn)
        ("open_clip encode_text, 77 tokens", "fp32", open_clip_fp32),
        ("vidseek, cut at EOT", "fp32", lambda text: fp32.encode_text([text])),
        ("vidseek, cut at EOT", f"auto = {auto.precision.precision}", lambda text: auto.encode_text([text])),
        ("vidseek, cut at EOT, ONNX Runtime, every row (before)", "fp32", through(every_row_fp32)),
        ("vidseek, cut at EOT, ONNX Runtime", "fp32", lambda text: onnx.encode_text([text])),
        ("vidseek, cut at EOT, ONNX Runtime, every row (before)", "int8 matrices", through(every_row_int8)),
        ("vidseek, cut at EOT, ONNX Runtime", "int8 matrices", lambda text: onnx_int8.encode_text([text])),
    ]
    for _, _, fn in calls:  # warm-up
        for text in queries[:5]:
            fn(text)
    latencies: list[list[float]] = [[] for _ in calls]
    cosines: list[list[float]] = [[] for _ in calls]
    for text in queries:  # round-robin: load from other processes falls on every call alike
        reference = None
        for i, (_, _, fn) in enumerate(calls):
            start = time.perf_counter()
            emb = fn(text)
            latencies[i].append((time.perf_counter() - start) * 1000)
            reference = emb if reference is None else reference
            cosines[i].append(float((emb * reference).sum()))
    base = latency_percentiles(latencies[0])["p50"]
    rows = []
    for (name, precision, _), times, cos in zip(calls, latencies, cosines):
        stats = latency_percentiles(times)
        rows.append({"call": name, "precision": precision, **stats, "speedup": base / stats["p50"], "cos_min": min(cos)})
    machine = machine_description()
    print(f"# text query latency: {args.model} ({args.pretrained} weights), {args.queries} queries, batch 1")
    print(f"machine: {machine['cpu']} ({machine['capability']}), {machine['cores']} cores, torch {machine['torch']} "
          f"with {args.threads} thread(s), load {machine['load_1min']:.2f}\n")
    print(markdown_table([Column("call", "call"), Column("precision", "precision"), Column("p50", "p50 ms", "{:.1f}"),
                          Column("p99", "p99 ms", "{:.1f}"), Column("speedup", "× open_clip fp32 (p50)", "{:.2f}"),
                          Column("cos_min", "min cos to open_clip fp32", "{:.6f}")], rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
