"""The query text tower on ONNX Runtime (models/text_onnx.py): equal to torch in float32, close
in int8, chosen by VIDSEEK_TEXT_RUNTIME, cached between process starts, visible in /healthz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.factory import load_backbone
from models.text_onnx import (
    ONNX,
    ONNX_INT8,
    TORCH,
    TextExportError,
    attach_text_runtime,
    build_onnx_text_tower,
    choose_text_runtime,
    export_text_tower,
    exportable_tower,
    int8_reduce_range,
    leading_token,
    quantize_int8,
)
from models.precision import CpuCapability
from search.settings import Settings, SettingsError
from tests.conftest import TINY_CONFIG_DIR, TINY_MODEL

TEXTS = ["a dog", "a red ball rolling across a kitchen floor", " ".join(["word"] * 120), ""]


def _torch_full_context(backbone: ClipBackbone, texts: list[str]) -> torch.Tensor:
    """open_clip's own forward over all 77 positions, normalised: the reference."""
    with torch.inference_mode():
        return F.normalize(backbone.model.encode_text(backbone.tokenizer(texts)).float(), dim=-1)


@pytest.fixture(scope="module")
def fresh_backbone() -> ClipBackbone:
    """A tiny model of its own: these tests attach text towers to it."""
    return load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "fp32")


def test_float32_graph_equals_the_full_context_torch_forward(tiny_backbone: ClipBackbone) -> None:
    tokens = tiny_backbone.tokenizer(TEXTS)
    assert int(tokens.argmax(-1).max()) == 76  # the long text fills the context
    tower = build_onnx_text_tower(tiny_backbone.model, tiny_backbone.tokenizer, quantize=False)
    got = F.normalize(tower(tokens), dim=-1)
    torch.testing.assert_close(got, _torch_full_context(tiny_backbone, TEXTS), atol=1e-5, rtol=1e-5)
    short = F.normalize(tower(tokens[:2]), dim=-1)  # a batch of short texts runs to its own last EOT
    torch.testing.assert_close(short, got[:2], atol=1e-5, rtol=1e-5)


def test_the_graph_holds_the_start_token_and_refuses_texts_without_it(tiny_backbone: ClipBackbone) -> None:
    """The graph runs positions 1..n-1 over the start token's stored keys and values: a row that
    does not start with that token (or has no EOT after it) is refused, not silently mis-encoded."""
    tower = build_onnx_text_tower(tiny_backbone.model, tiny_backbone.tokenizer, quantize=False)
    tokens = tiny_backbone.tokenizer(TEXTS)
    assert tower.first_token == int(tokens[0, 0]) == leading_token(tiny_backbone.tokenizer)
    shifted = tokens.clone()
    shifted[1, 0] = 5
    with pytest.raises(ValueError, match="starting with token"):
        tower(shifted)
    with pytest.raises(ValueError, match="ending with EOT"):
        tower(tokens[:, :1])
    with pytest.raises(TextExportError, match="do not all start with one token"):
        leading_token(lambda texts: torch.arange(len(texts) * 3).reshape(len(texts), 3))


def test_int8_graph_is_close_but_not_the_float32_graph(tiny_backbone: ClipBackbone) -> None:
    tokens = tiny_backbone.tokenizer(TEXTS)
    int8 = build_onnx_text_tower(tiny_backbone.model, tiny_backbone.tokenizer, quantize=True)
    got = F.normalize(int8(tokens), dim=-1)
    reference = _torch_full_context(tiny_backbone, TEXTS)
    cosine = (got * reference).sum(-1)
    assert cosine.min() >= 0.99
    assert (got - reference).abs().max() > 1e-5  # the weights really are int8
    assert int8.label == ONNX_INT8


def test_int8_weights_use_7_bits_on_cpus_without_vnni(tiny_backbone: ClipBackbone) -> None:
    """Without VNNI, u8 x s8 products are summed in saturating int16: 7-bit weights keep them in range
    (on an AVX2-only EPYC the tiny tower's min cosine was 0.984 with 8-bit weights, 0.997 with 7)."""
    assert int8_reduce_range(CpuCapability("AVX2")) and not int8_reduce_range(CpuCapability("AVX512", vnni=True))
    graph = export_text_tower(tiny_backbone.model, leading_token(tiny_backbone.tokenizer))
    for reduce_range, largest in ((True, 64), (False, 127)):
        weights = [numpy_helper.to_array(t) for t in onnx.load_from_string(quantize_int8(graph, reduce_range)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8]
        assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == largest


def test_backbone_encodes_through_the_attached_tower(fresh_backbone: ClipBackbone, tmp_path: Path) -> None:
    before = fresh_backbone.encode_text(TEXTS)
    choice = attach_text_runtime(fresh_backbone, ONNX, tmp_path)
    assert choice.runtime == fresh_backbone.text_runtime == ONNX
    after = fresh_backbone.encode_text(TEXTS)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert after.dtype == torch.float32 and after.shape == before.shape


def test_the_export_is_cached_and_a_stale_cache_is_replaced(tmp_path: Path, caplog) -> None:
    first = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "fp32")
    attach_text_runtime(first, ONNX, tmp_path)
    (cached,) = tmp_path.glob("text-*-g2-onnx.onnx")
    stamp = cached.stat().st_mtime_ns
    second = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "fp32")
    attach_text_runtime(second, ONNX, tmp_path)
    assert cached.stat().st_mtime_ns == stamp  # read, not written again
    other = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "fp32")
    with torch.no_grad():
        other.model.text_projection.mul_(-1.0)  # different weights under the same key
    with caplog.at_level("WARNING"):
        attach_text_runtime(other, ONNX, tmp_path)
    assert "stale" in caplog.text
    assert cached.stat().st_mtime_ns != stamp
    torch.testing.assert_close(other.encode_text(TEXTS), -second.encode_text(TEXTS), atol=1e-5, rtol=1e-5)


def test_bf16_weights_run_in_float32_within_the_precision_bar(tmp_path: Path) -> None:
    backbone = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "bf16")
    fp32 = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "fp32")
    attach_text_runtime(backbone, ONNX, tmp_path)
    cosine = (backbone.encode_text(TEXTS) * fp32.encode_text(TEXTS)).sum(-1)
    assert cosine.min() >= 0.999


def _non_causal(tmp_path: Path) -> ClipBackbone:
    config = json.loads((TINY_CONFIG_DIR / f"{TINY_MODEL}.json").read_text())
    config["text_cfg"].update(no_causal_mask=True, pool_type="last")
    (tmp_path / "vidseek-tiny-noncausal-onnx.json").write_text(json.dumps(config))
    return load_backbone("vidseek-tiny-noncausal-onnx", "random", "cpu", tmp_path, "fp32")


def test_a_non_causal_tower_keeps_torch_under_auto_and_is_refused_when_asked(tmp_path: Path) -> None:
    backbone = _non_causal(tmp_path)
    assert exportable_tower(backbone.model) is None
    choice = attach_text_runtime(backbone, "auto", tmp_path)
    assert choice.runtime == backbone.text_runtime == TORCH and "causal" in choice.reason
    with pytest.raises(TextExportError, match="VIDSEEK_TEXT_RUNTIME=onnx"):
        attach_text_runtime(backbone, ONNX, tmp_path)


def test_auto_is_onnx_on_cpu_and_torch_on_cuda() -> None:
    assert choose_text_runtime("auto", torch.device("cpu")).runtime == ONNX
    assert choose_text_runtime("auto", torch.device("cuda")).runtime == TORCH
    assert choose_text_runtime(ONNX_INT8, torch.device("cpu")).reason == "set by VIDSEEK_TEXT_RUNTIME"


def test_setting_is_validated() -> None:
    assert Settings.from_env({"VIDSEEK_TEXT_RUNTIME": "onnx-int8"}).text_runtime == ONNX_INT8
    with pytest.raises(SettingsError, match="VIDSEEK_TEXT_RUNTIME"):
        Settings.from_env({"VIDSEEK_TEXT_RUNTIME": "tensorrt"})


def test_healthz_and_the_page_name_the_runtime_and_search_uses_it(settings: Settings) -> None:
    from indexer.bulk import ingest_paths
    from indexer.service import build_runtime
    from search.api import create_app

    runtime = build_runtime(settings.with_overrides(text_runtime=ONNX_INT8))
    assert runtime.backbone.text_runtime == ONNX_INT8
    ingest_paths(runtime.settings, sorted(settings.media_roots[0].glob("*.mp4"))[:2], ingestor=runtime.ingestor())
    runtime.index.refresh(force=True)
    client = create_app(runtime.api_context()).test_client()
    health = client.get("/healthz").get_json()
    assert health["text_runtime"] == ONNX_INT8 and health["text_runtime_reason"] == "set by VIDSEEK_TEXT_RUNTIME"
    assert b"text: onnx-int8" in client.get("/").data
    answer = client.get("/api/search?q=a+red+ball&k=2")
    assert answer.status_code == 200 and answer.get_json()["hits"]


def test_the_cli_reports_a_tower_that_cannot_run_as_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """VIDSEEK_TEXT_RUNTIME=onnx over a non-causal tower: one clear line and exit status 2, not a traceback."""
    from indexer.cli import main

    _non_causal(tmp_path)
    for name, value in {"DATA_DIR": str(tmp_path / "data"), "MODEL": "vidseek-tiny-noncausal-onnx", "PRETRAINED": "random",
                        "MODEL_CONFIG_DIR": str(tmp_path), "DEVICE": "cpu", "TEXT_RUNTIME": ONNX, "LOG_FORMAT": "text"}.items():
        monkeypatch.setenv(f"VIDSEEK_{name}", value)
    assert main(["search", "a red ball"]) == 2
    err = capsys.readouterr().err
    assert "error: VIDSEEK_TEXT_RUNTIME=onnx: the text tower is not a plain causal" in err and "Traceback" not in err
