"""Reranking benchmark: what the llm reranker feeds its LLM and what prefill costs, and what each
reranker adds to query latency -- side by side, in one process.

    PYTHONPATH=. python -m benchmarks.rerank_bench --videos 50 --queries 40 --llm-queries 5 --json /tmp/rerank.json

Part 1, visual tokens and prefill FLOPs per candidate. 32 frames spread evenly over a real clip (LLaVA-OV's
video input) go through a tiny random LLaVA-OneVision with LLaVA-OV's input geometry (384 px, 14 px patches:
27 x 27 -> 196 tokens per frame after 2 x 2 pooling) and a 24-layer Qwen2 (LLaVA-OV-0.5B's depth, so the
HoliTom setting k = 18 applies). Rows: all tokens; HoliTom at retain 0.10 without and with the inner merge
(k = 18, r = 0.5); VQToken's adaptive codebook. Columns: visual tokens entering the LLM and left after the
merge, prefill FLOPs measured with ``FlopCounterMode`` on the tiny model, and the same prefill's FLOPs on
LLaVA-OV-0.5B's and -7B's LLM shapes (Qwen2-0.5B / Qwen2-7B) from ``analytic_prefill_flops`` (which the tests
check against ``FlopCounterMode``), each as a ratio to all tokens.

Part 2, query latency. A catalog of ``--videos`` synthetic videos (4 segments with random unit embeddings;
a CLIP-space HoliTom summary of 120 frames at retain 0.10; an LLM-space HoliTom summary of 32 frames) on the
tiny CLIP model and the tiny LLaVA above, queried in-process (no HTTP) with distinct texts, the methods
interleaved per query after one warm-up pass (text embeddings cached for all). Reports p50/p95 of the whole
query and of its rerank stage; ``rerank_k`` is 50, so with 50 videos every one of them is reranked.
Random weights: this measures cost, not answer quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config

from benchmarks.common import distinct_queries, percentile
from benchmarks.tiny_llava import save_tiny_llava
from indexer.decode import iter_sampled_frames
from indexer.samples import ensure_samples
from indexer.service import build_runtime
from models.rerankers.llava import LlavaReranker, VisualFeatures, llm_space_summary, llm_summary_key
from models.rerankers.prefill import InnerMergeParams
from models.flops import analytic_prefill_flops, count_flops
from models.summary import summarize
from search.catalog import SegmentRecord, SummaryRecord
from search.settings import Settings
from search.tables import LLM_SPACE

REPO = Path(__file__).resolve().parent.parent
TINY_CLIP = "vidseek-tiny-ViT"
TINY_CLIP_CONFIGS = REPO / "tests" / "assets" / "model_configs"
LLM_FRAMES = 32
INNER = InnerMergeParams(layer=18, ratio=0.5)
# The LLMs of LLaVA-OneVision-0.5B and -7B (their Hugging Face config.json text_config).
QWEN2_0_5B = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2)
QWEN2_7B = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4)


@dataclass
class TokenRow:
    method: str
    visual_tokens: int
    after_inner_merge: int
    tiny_flops: int
    tiny_ratio: float
    ov_0_5b_ratio: float
    ov_7b_ratio: float


@dataclass
class LatencyRow:
    rerank: str
    queries: int
    p50_ms: float
    p95_ms: float
    rerank_p50_ms: float
    added_p50_ms: float
    reranked: int
    fallback: int


def clip_frames(path: Path, count: int) -> tuple[np.ndarray, list[float]]:
    """``count`` frames spread evenly over ``path`` (decoded at 8 fps, short side 224)."""
    frames = list(iter_sampled_frames(path, 8.0, short_side=224))
    index = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.stack([frames[i].image for i in index]), [frames[i].time for i in index]


def token_table(model: LlavaReranker, clip: Path, query: str) -> list[TokenRow]:
    images, times = clip_frames(clip, LLM_FRAMES)
    features = model.encode_frames(images)
    holitom = llm_space_summary(features, times, "holitom", retain_ratio=0.10)
    vqtoken = llm_space_summary(features, times, "vqtoken")
    prefix, suffix = model.prompt_embeddings(query)
    text = prefix.shape[0] + suffix.shape[0]
    cases = [
        ("full tokens", features.tokens.flatten(0, 1), None),
        ("HoliTom 0.10", holitom.tokens, None),
        ("HoliTom 0.10 + inner merge k=18 r=0.5", holitom.tokens, INNER),
        (f"VQToken (K={vqtoken.num_tokens})", vqtoken.tokens, None),
    ]
    rows = []
    base: dict[str, int] = {}
    for name, tokens, inner in cases:
        visual = model.visual_inputs(tokens)
        merge = inner is not None
        _, tiny = count_flops(lambda v=visual, m=merge: model.score(query, [v], merge=m))
        real = {cfg: analytic_prefill_flops(config, text, visual.shape[0], inner)
                for cfg, config in (("0.5b", QWEN2_0_5B), ("7b", QWEN2_7B))}
        if not base:
            base = {"tiny": tiny, **real}
        after = round(visual.shape[0] * (1 - inner.ratio)) if inner else visual.shape[0]
        rows.append(TokenRow(name, visual.shape[0], after, tiny, tiny / base["tiny"], real["0.5b"] / base["0.5b"],
                             real["7b"] / base["7b"]))
    return rows


def fill_catalog(runtime, videos: int, llm_source: str, seed: int = 0) -> None:
    """``videos`` synthetic videos with segments and both summaries, written straight to the catalog."""
    g = torch.Generator().manual_seed(seed)
    key = runtime.ingestor().key
    width, dim = runtime.backbone.width, runtime.backbone.embed_dim
    llm_width = runtime.llm.get().model.config.text_config.hidden_size
    for i in range(videos):
        video = runtime.catalog.get_or_create_video(Path(f"/bench/video{i:03d}.mp4"), f"{i:064x}", 1)
        embeddings = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=-1).numpy()
        segments = [SegmentRecord(j, 30.0 * j, 30.0 * (j + 1), 30, None, embeddings[j]) for j in range(4)]
        clip = summarize("holitom", torch.randn(120, 49, width, generator=g), torch.rand(120, 49, generator=g),
                         [float(t) for t in range(120)], retain_ratio=0.10)
        llm = llm_space_summary(VisualFeatures(torch.randn(LLM_FRAMES, 196, llm_width, generator=g),
                                               torch.rand(LLM_FRAMES, 196, generator=g)),
                                [120.0 * t / LLM_FRAMES for t in range(LLM_FRAMES)], "holitom", retain_ratio=0.10)
        records = [SummaryRecord(clip.method, clip.num_tokens, clip.to_bytes()),
                   SummaryRecord(llm.method, llm.num_tokens, llm.to_bytes(), LLM_SPACE, llm_summary_key(llm_source, "holitom"))]
        runtime.catalog.replace_segments(video.id, segments, key, summaries=records, duration=120.0)
    runtime.index.refresh(force=True)


def latency_table(runtime, queries: list[str], llm_queries: int) -> list[LatencyRow]:
    for q in queries:  # warm-up: text embeddings cached, first-call overheads paid
        runtime.queries.search(q, 10, "none")
    runtime.queries.search(queries[0], 10, "late")
    runtime.queries.search(queries[0], 10, "llm")  # loads the model
    plan = {"none": queries, "late": queries, "llm": queries[:llm_queries]}
    samples: dict[str, list[dict]] = {m: [] for m in plan}
    for i, q in enumerate(queries):
        for method, chosen in plan.items():
            if i < len(chosen):
                t0 = time.perf_counter()
                result = runtime.queries.search(q, 10, method)
                samples[method].append({"ms": (time.perf_counter() - t0) * 1e3, "rerank": result.timings_ms.get("rerank", 0.0),
                                        "reranked": result.rerank.rescored, "fallback": result.rerank.fallback})
    base = statistics.median(s["ms"] for s in samples["none"])
    rows = []
    for method, runs in samples.items():
        ms = [r["ms"] for r in runs]
        rows.append(LatencyRow(method, len(runs), percentile(ms, 50), percentile(ms, 95),
                               statistics.median(r["rerank"] for r in runs), statistics.median(ms) - base,
                               max(r["reranked"] for r in runs), sum(r["fallback"] for r in runs)))
    return rows


def print_tables(tokens: list[TokenRow], latency: list[LatencyRow]) -> None:
    print("\nLLM reranker, one candidate (32 frames x 196 tokens), prefill FLOPs relative to full tokens")
    print(f"{'visual tokens':<40} {'in':>6} {'after k':>8} {'tiny FlopCounter':>17} {'OV-0.5B':>8} {'OV-7B':>8}")
    for r in tokens:
        print(f"{r.method:<40} {r.visual_tokens:>6} {r.after_inner_merge:>8} {r.tiny_ratio:>16.2%} "
              f"{r.ov_0_5b_ratio:>8.2%} {r.ov_7b_ratio:>8.2%}")
    print("\nQuery latency, in-process, tiny CLIP + tiny LLaVA on CPU")
    print(f"{'rerank':<8} {'queries':>7} {'p50 ms':>8} {'p95 ms':>8} {'rerank p50':>11} {'added p50':>10} {'reranked':>9} {'fallback':>9}")
    for r in latency:
        print(f"{r.rerank:<8} {r.queries:>7} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.rerank_p50_ms:>11.1f} "
              f"{r.added_p50_ms:>10.1f} {r.reranked:>9} {r.fallback:>9}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--llm-queries", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vidseek-rerank-bench-") as tmp:
        root = Path(tmp)
        llm_dir = save_tiny_llava(root / "tiny-llava-ov", image_size=384, patch_size=14, layers=24)
        samples = ensure_samples(root / "samples", include_real=True)
        clip = max((p for p in samples if p.suffix == ".mp4"), key=lambda p: p.stat().st_size)
        model = LlavaReranker.load(str(llm_dir), "cpu", INNER)
        tokens = token_table(model, clip, "a red ball bouncing on the floor")
        settings = Settings(data_dir=root / "data", model=TINY_CLIP, pretrained="random", model_config_dir=TINY_CLIP_CONFIGS,
                            device="cpu", summary="holitom", llm_reranker=str(llm_dir), rerank_timeout=600.0,
                            index_refresh_seconds=3600.0, log_format="text")
        runtime = build_runtime(settings)
        fill_catalog(runtime, args.videos, str(llm_dir))
        latency = latency_table(runtime, distinct_queries(args.queries), args.llm_queries)
    print(f"clip for part 1: {clip.name}; torch threads: {args.threads}")
    print_tables(tokens, latency)
    if args.json:
        args.json.write_text(json.dumps({"tokens": [asdict(r) for r in tokens], "latency": [asdict(r) for r in latency]}, indent=2))


if __name__ == "__main__":
    main()
