"""benchmarks/: the measuring helpers and smoke runs of the benchmarks on the tiny model (no timing
assertions). Op counting is ``models.flops``'s, tested in test_flops.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.common import (
    Column,
    CpuTimes,
    Timing,
    interleaved_timings,
    markdown_table,
    others_busy_share,
    peak_tensor_bytes,
)
from benchmarks import token_reduction
from benchmarks.token_reduction import (
    MAIN_COLUMNS,
    SUMMARIES,
    FrameSet,
    dedup_encode,
    default_videos,
    load_frame_set,
    main,
)
from models.encoders import FullClipEncoder


def test_peak_tensor_bytes_follows_allocations_and_frees():
    def work() -> torch.Tensor:
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB held
        del a
        c = torch.empty(500_000)  # 10 MB held
        return b[:1] + c[:1]  # 4 more bytes

    _, peak = peak_tensor_bytes(work)
    assert peak == 12_000_000


def test_interleaved_timings_take_turns():
    order: list[str] = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = interleaved_timings(calls, repeats=2, warmup=1, before_each=lambda: order.append("wait"))
    assert order == ["a", "b"] + ["wait", "a", "wait", "b"] * 2  # no waiting before warm-up runs
    assert [len(t.seconds) for t in timings.values()] == [2, 2]
    assert all(b is None or 0.0 <= b <= 1.0 for t in timings.values() for b in t.others_busy)


def test_undisturbed_repeats():
    timing = Timing(seconds=(1.0, 5.0, 1.2, 3.0), others_busy=(0.0, 0.6, None, 0.2))
    assert timing.undisturbed(0.15) == (1.0, 1.2)
    assert Timing(seconds=(2.0, 3.0), others_busy=(0.5, 0.9)).undisturbed(0.15) == (2.0, 3.0)


def test_others_busy_share_subtracts_this_process():
    tick = os.sysconf("SC_CLK_TCK")
    before = CpuTimes.parse("cpu  100 0 50 800 50 0 0 0 0 0")
    after = CpuTimes.parse("cpu  160 0 70 890 70 0 0 10 0 0")  # +90 busy jiffies of +200
    assert (before.busy, before.total) == (150, 1000)
    assert others_busy_share(before, after, own_cpu_seconds=0.0) == pytest.approx(0.45)
    assert others_busy_share(before, after, own_cpu_seconds=60 / tick) == pytest.approx(0.15)


def test_markdown_table():
    columns = [Column("name", "name"), Column("x", "value", "{:.2f}")]
    table = markdown_table(columns, [{"name": "a", "x": 1.234}, {"name": "bb"}])
    assert table.splitlines() == [
        "| name | value |",
        "|------|-------|",
        "|    a |  1.23 |",
        "|   bb |     - |",
    ]


def test_dedup_encode_folds_repeated_frames_into_the_kept_one(tiny_backbone):
    encoder = FullClipEncoder(tiny_backbone)
    distinct = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    pixels = torch.stack([distinct[0], distinct[0], distinct[0], distinct[1], distinct[2]])
    result = dedup_encode(encoder, [(pixels, torch.arange(5.0))], threshold=0.15)
    assert result.kept == 3
    assert result.spans[0].kept.tolist() == [0, 3, 4]
    reference = encoder.encode(pixels[None]).frame_embeddings[0]
    torch.testing.assert_close(result.frame_embeddings[0], reference, atol=1e-5, rtol=0)


def test_load_frame_set_deals_segments_to_videos(tiny_backbone, samples_dir):
    videos = [samples_dir / "three_scenes.mp4", samples_dir / "red_ball.mp4"]
    frames = load_frame_set(videos, tiny_backbone, segments=3, frames=4)
    assert isinstance(frames, FrameSet)
    assert frames.pixels.shape == (3, 4, 3, 224, 224)
    assert frames.videos == ("three_scenes.mp4", "three_scenes.mp4", "red_ball.mp4")
    assert frames.video_groups() == [slice(0, 2), slice(2, 3)]
    three_scenes = frames.times[:2].flatten()
    assert bool((three_scenes[1:] > three_scenes[:-1]).all()) and float(three_scenes[-1]) > 30  # spread over 36 s


def test_main_prints_and_writes_the_table(tiny_config_dir, tmp_path, capsys, monkeypatch):
    """The whole benchmark on the tiny model, kept short: one generated clip for both tables (the real
    clips only matter for real runs) and VQToken's adaptive K over 12..14 instead of 12..32 (its elbow
    is tested in test_vqtoken.py)."""
    out = tmp_path / "report.json"
    monkeypatch.setattr(token_reduction, "SUMMARIES", (*SUMMARIES[:-1], ("vqtoken", "vqtoken", {"k_min": 12, "k_max": 14})))
    clip = str(default_videos(tmp_path, 1)[0])
    report = main([
        "--model", "vidseek-tiny-ViT", "--pretrained", "random", "--model-config-dir", str(tiny_config_dir),
        "--segments", "1", "--repeats", "1", "--warmup", "0", "--quiet-timeout", "0", "--json", str(out),
        "--video", clip, "--dedup-video", clip,
    ])
    methods = ["full", "tempme", "bvllm-dedup"] + [name for name, _, _ in SUMMARIES]
    assert [r.method for r in report.rows] == methods
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start : start + 2 + len(methods)]]
    assert table[0] == [c.header for c in MAIN_COLUMNS]
    assert [cells[0] for cells in table[2:]] == methods
    assert all(len(cells) == len(MAIN_COLUMNS) for cells in table[2:])
    assert lines[start + 2 + len(methods)] == ""  # nothing else in the table
    rows = {r.method: r for r in report.rows}
    assert rows["tempme"].tokens == 97 and rows["full"].tokens == 600
    assert rows["full"].vit_gmacs == pytest.approx(rows["full"].vit_gmacs_analytic, rel=0)
    assert rows["tempme"].vit_gmacs == pytest.approx(rows["tempme"].vit_gmacs_analytic, rel=0)
    assert report.videos == ["still_then_motion.mp4"] and len(report.dedup) == 1
    assert report.dedup[0].kept < report.dedup[0].frames  # the still stretch collapses
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved["rows"]] == methods
    assert set(saved["rows"][0]) >= {c.key for c in MAIN_COLUMNS}
    assert [t["what"] for t in saved["targets"]] == [t.what for t in report.targets]


def test_precision_table_on_the_tiny_model(tiny_config_dir, tmp_path, capsys):
    """fp32, auto and bf16 rows (this test's machine may or may not have bf16 units), cosines to fp32."""
    out = tmp_path / "precision.json"
    report = main([
        "--precision", "--model", "vidseek-tiny-ViT", "--pretrained", "random", "--model-config-dir",
        str(tiny_config_dir), "--segments", "1", "--frames", "4", "--precision-repeats", "1", "--warmup", "0",
        "--quiet-timeout", "0", "--json", str(out),
    ])
    rows = {(r["call"], r["precision"]): r for r in report["rows"]}
    assert rows[("open_clip encode_image", "fp32")]["ratio"] == 1.0
    for method in ("full (vidseek)", "tempme (vidseek)"):
        assert rows[(method, "fp32")]["cos_min"] == pytest.approx(1.0, abs=1e-6)
        bf16 = [r for (m, p), r in rows.items() if m == method and "bf16" in p]
        assert len(bf16) == 1 and bf16[0]["cos_min"] >= 0.99
    assert report["bookkeeping"]["cos_min"] == pytest.approx(1.0, abs=1e-5)
    text = capsys.readouterr().out
    assert "CPU capability: " in text and "VIDSEEK_PRECISION=auto chooses" in text
    assert json.loads(out.read_text())["cpu_capability"] == report["cpu_capability"]


def test_spine_bench_smoke(tiny_config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """benchmarks.spine_bench end to end on the tiny model: ingest, serve, query; no timing assertions."""
    from benchmarks.spine_bench import main as spine_main
    from indexer.samples import SAMPLES, write_video

    videos = tmp_path / "videos"
    for sample in SAMPLES[:2]:
        write_video(videos / f"{sample.name}.mp4", sample.paint, 2)
    out = tmp_path / "spine.json"
    results = spine_main(["--model", "vidseek-tiny-ViT", "--model-config-dir", str(tiny_config_dir),
                          "--encoders", "full,tempme", "--queries", "3", "--videos", str(videos), "--json", str(out)])
    assert [r.encoder for r in results] == ["full", "tempme"]
    assert all(r.videos == 2 and r.frames == 4 and r.frames_per_second > 0 and r.query_p50_ms > 0 for r in results)
    printed = capsys.readouterr().out
    assert "| encoder |" in printed and "tempme" in printed
    assert len(json.loads(out.read_text())) == 2


def test_text_bench_on_the_tiny_model(tiny_config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks.text_bench import main as text_main

    rows = text_main(["--model", "vidseek-tiny-ViT", "--model-config-dir", str(tiny_config_dir), "--queries", "6",
                      "--json", str(tmp_path / "text.json")])
    assert [r["precision"].split(" ")[0] for r in rows] == ["fp32", "fp32", "auto", "fp32", "fp32", "int8", "int8"]
    assert rows[1]["cos_min"] > 0.99999  # the EOT cut is the same function in fp32
    assert rows[2]["cos_min"] > 0.99  # auto: bf16 where the CPU has bf16 units, else fp32
    # the same function on ONNX Runtime, with and without the row cuts
    assert all(r["cos_min"] > 0.99999 and "ONNX" in r["call"] for r in rows[3:5])
    assert "every row" in rows[3]["call"] and "every row" not in rows[4]["call"]
    assert all(0.99 < r["cos_min"] < 0.999999 for r in rows[5:])  # int8 matrices: close, not equal
    assert all(r["p50"] > 0 and r["p99"] >= r["p50"] for r in rows)
    assert json.loads((tmp_path / "text.json").read_text())["rows"] == rows
    assert "min cos to open_clip fp32" in capsys.readouterr().out


def test_int8_range_bench_on_the_tiny_model(tiny_config_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks.int8_range import main as range_main

    rows = range_main(["--model", "vidseek-tiny-ViT", "--model-config-dir", str(tiny_config_dir), "--queries", "8"])
    assert [r["weights"] for r in rows] == ["float32 graph", "int8, 8-bit weights", "int8, 7-bit weights"]
    assert rows[0]["cos_min"] > 0.99999  # the float32 graph is torch's forward
    assert all(r["cos_min"] < 0.999999 and r["p50"] > 0 for r in rows[1:])  # int8: close, not equal
    assert "onnx-int8 uses" in capsys.readouterr().out


def test_query_profile_on_the_tiny_model(tiny_config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks.query_profile import main as profile_main

    rows = profile_main(["--model", "vidseek-tiny-ViT", "--model-config-dir", str(tiny_config_dir), "--segments", "2000",
                         "--queries", "5", "--database-url", f"sqlite:///{tmp_path / 'catalog.db'}",
                         "--json", str(tmp_path / "profile.json")])
    assert [r["text_runtime"] for r in rows] == ["torch", "onnx", "onnx-int8"]
    for row in rows:  # every stage was timed, and the parts fit inside the whole
        assert all(row[f"{stage}_p50"] > 0 for stage in ("encode", "faiss", "catalog_reads", "total", "every_candidate_read"))
        assert row["encode_p50"] + row["faiss_p50"] < row["total_p50"] <= row["total_p99"]
    assert json.loads((tmp_path / "profile.json").read_text())["rows"] == rows
    assert "| text runtime |" in capsys.readouterr().out


def test_ingest_bench_smoke_on_a_short_generated_clip(tmp_path: Path) -> None:
    """benchmarks/ingest_bench.py end to end on a 2-second generated 1080p clip and the tiny model:
    every decode and ingestion mode gives a row with its samples, CPU seconds and the CPU ceiling."""
    from benchmarks import ingest_bench

    result = ingest_bench.main([
        "--model", "vidseek-tiny-ViT", "--model-config-dir", str(Path(__file__).parent / "assets" / "model_configs"),
        "--seconds", "2", "--repeats", "1", "--media", str(tmp_path / "none"), "--cache-dir", str(tmp_path),
    ])
    assert [r["mode"] for r in result["decode"]] == list(ingest_bench.DECODE_MODES)
    assert [r["mode"] for r in result["ingest"]] == list(ingest_bench.INGEST_MODES)
    for row in result["decode"] + result["ingest"]:
        assert row["samples"] == 2 and row["cpu_seconds"] > 0
    for row in result["ingest"]:
        assert row["ceiling"] == pytest.approx(
            result["ingest"][0]["seconds"] / (row["cpu_seconds"] / (os.cpu_count() or 1)))


def test_load_bench_query_serves_each_index_list_storage(tiny_config_dir: Path) -> None:
    """benchmarks/load_bench.py query end to end on a small PostgreSQL catalog and the tiny model: a
    real `vidseek serve` per --index-lists value, each measured with every --clients count."""
    from benchmarks import load_bench
    from tests.conftest import TINY_MODEL, temporary_database

    with temporary_database("vidseek_loadbench") as url:
        rows = load_bench.main([
            "--model", TINY_MODEL, "--model-config-dir", str(tiny_config_dir), "query", "--database-url", url,
            "--segments", "400", "--clients", "1", "2", "--requests", "6", "--processes", "1", "--threads", "2",
            "--text-batch", "on", "--text-runtime", "torch", "--index-lists", "fp32", "fp16",
        ])
    assert [(r["index_lists"], r["clients"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("fp16", 1), ("fp16", 2)]
    for row in rows:
        assert row["errors"] == 0 and row["segments"] == 400 and row["latency_ms"]["p50"] > 0
        assert set(row["server_stage_ms"]) >= {"encode", "search"}
