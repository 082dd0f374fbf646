"""int8 text towers with 8-bit against 7-bit weights (``models.text_onnx.quantize_int8``'s
``reduce_range``), side by side in one process: how far each lies from torch's float32 forward (min
and mean cosine over distinct queries) and one query's latency (p50), next to the float32 graph.

CPUs without VNNI sum uint8 x int8 products in a saturating int16 (``vpmaddubsw``), which 7-bit
weights keep in range; the line above the table says whether this CPU has VNNI, and which range
``VIDSEEK_TEXT_RUNTIME=onnx-int8`` picks on it (``models.text_onnx.int8_reduce_range``).

    PYTHONPATH=. python benchmarks/int8_range.py --queries 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Column, distinct_queries, latency_percentiles, machine_line, markdown_table
from models.factory import load_backbone
from models.precision import FP32, detect_cpu_capability
from models.text_onnx import export_text_tower, int8_reduce_range, leading_token, open_session, quantize_int8
from models.weights import RANDOM_WEIGHTS


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=RANDOM_WEIGHTS)
    parser.add_argument("--model-config-dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    backbone = load_backbone(args.model, args.pretrained, "cpu", args.model_config_dir, FP32)
    first = leading_token(backbone.tokenizer)
    graph = export_text_tower(backbone.model, first)
    towers = {
        "float32 graph": open_session(graph, False, first, threads=1),
        "int8, 8-bit weights": open_session(quantize_int8(graph, reduce_range=False), True, first, threads=1),
        "int8, 7-bit weights": open_session(quantize_int8(graph, reduce_range=True), True, first, threads=1),
    }
    tokens = backbone.tokenizer(distinct_queries(args.queries))
    with torch.inference_mode():
        reference = F.normalize(backbone.model.encode_text(tokens).float(), dim=-1)
    latencies: dict[str, list[float]] = {name: [] for name in towers}
    for i in range(len(tokens)):  # round-robin, one query at a time
        for name, tower in towers.items():
            start = time.perf_counter()
            tower(tokens[i:i + 1])
            latencies[name].append((time.perf_counter() - start) * 1000)
    rows = []
    for name, tower in towers.items():
        cosine = (F.normalize(tower(tokens), dim=-1) * reference).sum(-1)
        rows.append({"weights": name, "cos_min": float(cosine.min()), "cos_mean": float(cosine.mean()),
                     "p50": latency_percentiles(latencies[name])["p50"]})
    cpu = detect_cpu_capability()
    picked = "7-bit" if int8_reduce_range(cpu) else "8-bit"
    print(f"# int8 weight range: {args.model} ({args.pretrained} weights), {args.queries} queries, 1 thread")
    print(f"{machine_line()}; VNNI: {'yes' if cpu.vnni else 'no'}, so onnx-int8 uses {picked} weights here\n")
    print(markdown_table([Column("weights", "graph"), Column("cos_min", "min cos to torch fp32", "{:.5f}"),
                          Column("cos_mean", "mean cos", "{:.5f}"), Column("p50", "p50 ms", "{:.2f}")], rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "vnni": cpu.vnni}, indent=2))
    return rows


if __name__ == "__main__":
    main()
