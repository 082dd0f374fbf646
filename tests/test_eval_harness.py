"""`vidseek eval` end to end on the generated sample videos with the tiny model, plus the pieces
the harness measures with: FLOP counting, the metered encoder, segment pooling, configurations,
the reranker seam."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.cli import main
from indexer.decode import center_crop, iter_sampled_frames
from indexer.evaluation.annotations import Annotations, Caption, resolve_videos
from indexer.evaluation import harness
from indexer.evaluation.configs import EvalError, parse_encoder_config
from indexer.evaluation.harness import EvalRequest, pool_segments, run_eval
from indexer.evaluation.meter import MeteredEncoder
from indexer.evaluation.metrics import retrieval_metrics
from indexer.samples import captions
from models.backbone import ClipBackbone
from models.bvllm import STATIC_CHANGE_THRESHOLD
from models.encoders import FullClipEncoder
from models.flops import count_flops
from models.registry import RERANKERS, Method
from models.tempme import TempMeEncoder
from search.rerank_service import RerankOutcome, Rescored
from search.settings import Settings
from tests.conftest import settings_env


def vit_flops(backbone: ClipBackbone) -> tuple[int, int]:
    """Hand count for one frame (multiply-add = 2): (patch embedding, whole forward)."""
    w, tokens, e = backbone.width, 1 + backbone.num_patches, backbone.embed_dim
    patch = backbone.visual.conv1.kernel_size[0]
    hidden = backbone.visual.transformer.resblocks[0].mlp.c_fc.out_features
    conv = 2 * backbone.num_patches * w * 3 * patch * patch
    block = 2 * tokens * w * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * w + 2 * 2 * tokens * w * hidden
    return conv, conv + len(backbone.visual.transformer.resblocks) * block + 2 * w * e


def test_flop_count_of_a_clip_forward_matches_the_hand_count(tiny_backbone: ClipBackbone) -> None:
    """open_clip's blocks run nn.MultiheadAttention's fused fast path, which the stock counter
    does not see; with the added formulas every attention FLOP is there."""
    _, per_frame = vit_flops(tiny_backbone)
    pixels = torch.randn(2, 3, 3, 224, 224)
    _, flops = count_flops(lambda: FullClipEncoder(tiny_backbone).encode(pixels))
    assert flops == 6 * per_frame


def test_metered_encoder_passes_output_through_and_counts(tiny_backbone: ClipBackbone) -> None:
    conv, per_frame = vit_flops(tiny_backbone)
    inner = FullClipEncoder(tiny_backbone)
    metered = MeteredEncoder(inner)
    pixels = torch.randn(3, 4, 3, 224, 224)
    with metered.attached():
        out = metered.encode(pixels)
        metered.encode(pixels[:1, :2])
        tiny_backbone.visual.conv1(pixels[0])  # patch embeddings outside the encoder: 4 frames
    torch.testing.assert_close(out.embeddings, inner.encode(pixels).embeddings)
    m = metered.meter
    assert (m.frames_encoded, m.tokens) == (14, 14 * 50)
    assert m.flops == 14 * per_frame + 4 * conv
    assert m.encode_seconds > 0 and m.overhead_seconds > 0
    tiny_backbone.visual.conv1(pixels[0])  # detached: no longer counted
    assert metered.meter.flops == m.flops


def test_segments_pool_by_the_time_they_cover() -> None:
    pooled = pool_segments(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([12.0, 4.0]))
    np.testing.assert_allclose(pooled, np.array([3.0, 1.0]) / np.sqrt(10.0), rtol=1e-6)
    np.testing.assert_allclose(pool_segments(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2)), [2**-0.5] * 2, rtol=1e-6)


def test_configuration_names_become_settings_overrides(settings: Settings) -> None:
    dedup = parse_encoder_config("tempme+bvllm-dedup", settings)
    assert dedup.overrides == {"encoder": "tempme", "frame_dedup": STATIC_CHANGE_THRESHOLD}
    tuned = settings.with_overrides(frame_dedup=0.3)
    assert parse_encoder_config("full", tuned).overrides == {"encoder": "full", "frame_dedup": 0.0}
    assert parse_encoder_config("full+bvllm-dedup", tuned).overrides["frame_dedup"] == 0.3
    with pytest.raises(EvalError, match="unknown modifier 'fast'"):
        parse_encoder_config("full+fast", settings)
    with pytest.raises(EvalError, match="VIDSEEK_ENCODER must be one of"):
        parse_encoder_config("turbo", settings)


def expected_meanp_metrics(backbone: ClipBackbone, paths: list[Path], texts: list[str], encoder=None):
    """CLIP4Clip meanP computed directly: up to 12 frames at 1 fps, mean of normalised frame
    embeddings, against the caption embeddings; with ``encoder``, its embedding of the frames as one segment."""
    videos = []
    for path in paths:
        frames = np.stack([center_crop(f.image, 224) for f in iter_sampled_frames(path, 1.0, 12, short_side=224)])
        pixels = backbone.pixels_from_frames(frames)
        if encoder is not None:
            videos.append(encoder.encode(pixels[None]).embeddings[0])
            continue
        per_frame = backbone.encode_frames(pixels).embeddings
        videos.append(F.normalize(per_frame.mean(0), dim=0))
    sim = (backbone.encode_text(texts) @ torch.stack(videos).T).numpy()
    return retrieval_metrics(sim, np.arange(len(paths)))


def test_vidseek_eval_cli_on_the_sample_videos(
    settings: Settings, samples_dir: Path, tiny_backbone: ClipBackbone, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    """``vidseek eval`` as a user runs it (the CLI's ``main``, settings from the environment), in this
    process: the tiny model loads in no time, a Python with torch takes seconds to start."""
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    names = sorted(captions())
    annotations = tmp_path / "samples_test.csv"
    with annotations.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, name in enumerate(names):
            writer.writerow([f"ret{i}", f"msr{i}", Path(name).stem, captions()[name]])
    out = tmp_path / "report"
    code = main(["eval", "--videos", str(samples_dir), "--annotations", str(annotations),
                 "--encoders", "full,full+bvllm-dedup,tempme,tempme+bvllm-dedup", "--rerank", "none",
                 "--out", str(out), "--work-dir", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "full+bvllm-dedup" in printed.out and "R-Sum" in printed.out
    assert (out / "r1_vs_gflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["annotations"] == {"path": str(annotations), "format": "msrvtt-csv", "videos": 6, "captions": 6}
    assert report["sampling"] == {"sample_fps": 1.0, "max_frames": 12, "segment_frames": 12}
    assert report["weights"].startswith("file-") and report["tempme_weights"] is None
    full, dedup, tempme, tempme_dedup = report["configurations"]
    assert [c["name"] for c in report["configurations"]] == ["full", "full+bvllm-dedup", "tempme", "tempme+bvllm-dedup"]
    assert list(tmp_path.glob("vidseek-eval-*")) == []  # the temporary catalogs are gone

    # The metrics are those of CLIP4Clip's meanP video embedding (one 12-frame segment per video).
    expected = expected_meanp_metrics(tiny_backbone, [samples_dir / n for n in names], [captions()[n] for n in names])
    for direction in ("text_to_video", "video_to_text"):
        assert full[direction] == pytest.approx(getattr(expected, direction).as_dict(), abs=1e-6)
    assert full["rsum"] == pytest.approx(expected.rsum)

    # Cost: 8, 8, 8, 10, 8 and 12 frames sampled (1 fps, at most 12); 50 tokens per frame.
    conv, per_frame = vit_flops(tiny_backbone)
    e = full["efficiency"]
    assert (e["videos"], e["frames_sampled"], e["frames_encoded"]) == (6, 54, 54)
    assert e["tokens_per_video"] == 54 * 50 / 6
    assert e["gflops_per_video"] == pytest.approx(54 * per_frame / 6 / 1e9, rel=1e-12)
    assert e["encode_fps"] > 0 and e["ingest_fps"] > 0
    # Frame dropping: fewer frames through the ViT, plus one patch embedding per sampled frame.
    d = dedup["efficiency"]
    assert d["frames_sampled"] == 54 and d["frames_encoded"] < 54
    assert d["tokens_per_video"] == d["frames_encoded"] * 50 / 6
    assert d["gflops_per_video"] == pytest.approx((d["frames_encoded"] * per_frame + 54 * conv) / 6 / 1e9, rel=1e-12)
    assert dedup["settings"] == {"encoder": "full", "frame_dedup": STATIC_CHANGE_THRESHOLD}

    # TempMe: the same frames, fewer tokens and FLOPs; its count is one forward per video length.
    t = tempme["efficiency"]
    assert (t["frames_sampled"], t["frames_encoded"]) == (54, 54)
    encoder = TempMeEncoder(tiny_backbone)
    per_length = {n: count_flops(lambda n=n: encoder.encode(torch.randn(1, n, 3, 224, 224)))[1] for n in (8, 10, 12)}
    per_video = [per_length[n] for n in (8, 8, 8, 10, 8, 12)]
    assert t["gflops_per_video"] == pytest.approx(sum(per_video) / 6 / 1e9, rel=1e-12)
    assert t["tokens_per_video"] < e["tokens_per_video"] and t["gflops_per_video"] < e["gflops_per_video"]
    # Frame dropping happens before the encoder: the same frames reach TempMe as plain CLIP.
    assert tempme_dedup["efficiency"]["frames_encoded"] == d["frames_encoded"]
    # TempMe's metrics are those of its own segment embeddings (one segment per video), computed directly.
    expected_tempme = expected_meanp_metrics(tiny_backbone, [samples_dir / n for n in names],
                                             [captions()[n] for n in names], encoder)
    for direction in ("text_to_video", "video_to_text"):
        assert tempme[direction] == pytest.approx(getattr(expected_tempme, direction).as_dict(), abs=1e-6)
    assert tempme["rsum"] == pytest.approx(expected_tempme.rsum)
    assert tempme_dedup["text_to_video"]["count"] == 6 and tempme_dedup["settings"]["frame_dedup"] == STATIC_CHANGE_THRESHOLD


def test_multi_sentence_set_and_a_custom_reranker(
    settings: Settings, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several captions per video take the multi-sentence protocol; a registered reranker
    scores the same ingestion through its rewritten similarity matrix."""
    seen: dict[str, list] = {"videos": [], "texts": []}

    class Reverse:
        """Negates first-stage scores (a same-scale reranker built from the registry like the search's)."""

        name, same_scale = "reverse", True

        def rescore(self, query, vector, candidates):
            seen["texts"].append(query)
            seen["videos"].append(sorted(c.video_id for c in candidates))
            return RerankOutcome({c.video_id: Rescored(-c.score) for c in candidates})

    monkeypatch.setitem(RERANKERS.methods, "reverse", Method("reverse", lambda inputs: Reverse()))
    texts = {"red_ball": ["a red ball", "a ball rolls"], "snow": ["snow falls", "white flakes"], "stripes": ["stripes"]}
    ann = Annotations(tuple(Caption(v, t) for v, ts in texts.items() for t in ts), "msrvtt-json")
    request = EvalRequest(
        settings, ann, Path("captions.json"), resolve_videos(ann.video_ids, samples_dir),
        [parse_encoder_config("full", settings)], ["none", "reverse"],
    )
    run = run_eval(request)
    plain, reversed_ = run.results
    assert (run.videos, run.captions) == (3, 5)
    assert plain.metrics.multi_sentence and plain.metrics.text_to_video.count == 5
    assert plain.efficiency is reversed_.efficiency and reversed_.name == "full +rerank reverse"
    assert len(seen["texts"]) == 5 and seen["texts"][0] == "a red ball"
    assert all(len(ids) == 3 for ids in seen["videos"])  # every caption's 3 videos (rerank_k = 50)
    # Reversing the scores reverses every caption's ranking: rank r becomes V - 1 - r.
    assert plain.metrics.text_to_video.mean_rank + reversed_.metrics.text_to_video.mean_rank == pytest.approx(3 + 1)


def test_bad_requests_fail_before_any_work(
    settings: Settings, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    annotations = tmp_path / "a.csv"
    annotations.write_text("video_id,sentence\nred_ball,a red ball\nno_such_clip,nothing\n")
    base = ["eval", "--videos", str(samples_dir), "--annotations", str(annotations)]

    assert main([*base, "--rerank", "bm25"]) == 2
    assert "unknown reranker 'bm25'; available: none, late" in capsys.readouterr().err
    assert main([*base, "--encoders", "full,turbo"]) == 2
    assert "VIDSEEK_ENCODER must be one of" in capsys.readouterr().err
    assert main(base) == 2
    assert "1 of 2 annotated videos are not in" in capsys.readouterr().err and not (tmp_path / "vidseek-eval").exists()


def test_late_reranking_rescores_each_captions_top_videos(
    settings: Settings, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--rerank late`` ingests HoliTom summaries and rescores every caption's videos with the
    search's late-interaction reranker: (1 - w) * first stage + w * MaxSim over the summary tokens."""
    from indexer.pipeline import embedding_key
    from models.rerankers.late import LateParams, late_interaction, project_summaries
    from models.summary import VideoSummary
    from search.catalog import CLIP_SPACE

    checked = {}
    real_rerank = harness.rerank_similarities

    def spy(method, ingested, sim):
        """Check the reranked matrix against a direct computation while the catalog exists."""
        rescored = real_rerank(method, ingested, sim)
        if method == "none":
            assert rescored is sim
            return rescored
        assert ingested.settings.summary == "holitom"
        summaries = ingested.catalog.summaries(list(ingested.video_ids), embedding_key(ingested.encoder), CLIP_SPACE)
        assert set(summaries) == set(ingested.video_ids)
        text = ingested.backbone.encode_text(list(ingested.texts))
        params = LateParams(weight=settings.rerank_weight)
        for v, vid in enumerate(ingested.video_ids):
            summary = VideoSummary.from_bytes(summaries[vid].data)
            units = project_summaries([summary.tokens], ingested.backbone.project)[0]
            for q in range(len(ingested.texts)):
                expected = late_interaction(units, summary, text[q], float(sim[q, v]), params, 1.0 / settings.sample_fps)
                assert rescored[q, v] == pytest.approx(expected.score, abs=1e-5)
                checked[q, v] = True
        return rescored

    monkeypatch.setattr(harness, "rerank_similarities", spy)
    texts = {"red_ball": ["a red ball"], "snow": ["snow falls"], "three_scenes": ["stripes, then snow"]}
    ann = Annotations(tuple(Caption(v, t) for v, ts in texts.items() for t in ts), "msrvtt-json")
    request = EvalRequest(
        settings, ann, Path("captions.json"), resolve_videos(ann.video_ids, samples_dir),
        [parse_encoder_config("full", settings)], ["none", "late"],
    )
    plain, late = run_eval(request).results
    assert late.name == "full +rerank late" and late.metrics.text_to_video.count == 3
    assert len(checked) == 9
