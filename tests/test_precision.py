"""VIDSEEK_PRECISION (models/precision.py) and exact short text sequences (models/text_tower.py).

The CPU capability is handed in (``cpu_probe``), never patched inside torch; bf16 runs are
compared with fp32 by cosine, never bit for bit (CI runs on AVX2 and AMX machines alike).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.bvllm import drop_static_frames
from models.encoders import FullClipEncoder
from models.factory import load_backbone
from models.precision import BF16, FP16, FP32, CpuCapability, choose_precision
from models.summary import summarize
from models.tempme import TempMeEncoder
from models.text_tower import causal_eot_tower, encode_text_tokens
from tests.conftest import TINY_CONFIG_DIR, TINY_MODEL

AVX2 = CpuCapability("AVX2")
AVX512 = CpuCapability("AVX512")
AMX = CpuCapability("AVX512", amx=True, avx512_bf16=True)
AVX512_BF16 = CpuCapability("AVX512", avx512_bf16=True)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _never() -> CpuCapability:
    raise AssertionError("the CPU probe must not run here")


# ----- the policy ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cpu, expected",
    [(AVX2, FP32), (AVX512, FP32), (AMX, BF16), (AVX512_BF16, BF16), (CpuCapability("AVX512", amx=True), BF16)],
)
def test_auto_on_cpu_follows_the_bf16_units(cpu: CpuCapability, expected: str) -> None:
    choice = choose_precision("auto", CPU, lambda: cpu)
    assert choice.precision == expected
    assert choice.reason.startswith("auto: CPU") and cpu.isa in choice.reason
    assert ("no bf16 units" in choice.reason) == (expected == FP32)


def test_auto_on_cuda_is_fp16_and_explicit_choices_win() -> None:
    assert choose_precision("auto", CUDA, _never).precision == FP16
    for wanted in (FP32, BF16, FP16):
        choice = choose_precision(wanted, CPU, _never)
        assert choice.precision == wanted and choice.reason == "set by VIDSEEK_PRECISION"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int8", CPU, _never)


def test_weights_are_cast_once_at_load() -> None:
    """auto on an AMX machine loads bf16 weights (open_clip's mixed precision: LayerNorm stays
    fp32); on an AVX2 machine it stays fp32. The key does not depend on the precision."""
    amx = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "auto", cpu_probe=lambda: AMX)
    avx2 = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, "auto", cpu_probe=lambda: AVX2)
    assert amx.dtype == torch.bfloat16 and amx.precision.precision == BF16 and "AMX" in amx.precision.reason
    assert avx2.dtype == torch.float32 and avx2.precision.precision == FP32
    assert amx.key == avx2.key
    block = amx.visual.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == torch.bfloat16 and block.ln_1.weight.dtype == torch.float32
    assert amx.pixels_from_frames(torch.zeros(1, 224, 224, 3, dtype=torch.uint8)).dtype == torch.bfloat16


# ----- bf16 against fp32 -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_backbone() -> ClipBackbone:
    return load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR, BF16)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(0, -2).float(), b.flatten(0, -2).float(), dim=-1)


def _frames(seed: int = 0) -> torch.Tensor:
    """uint8 frames ``[2 * 12, 224, 224, 3]``: smooth random images, two segments of 12."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(24, 3, 7, 7, generator=gen)
    return (F.interpolate(low, size=224, mode="bilinear") * 255).to(torch.uint8).permute(0, 2, 3, 1)


@pytest.mark.parametrize("encoder", [FullClipEncoder, TempMeEncoder])
def test_bf16_and_fp32_encoders_agree(encoder, tiny_backbone: ClipBackbone, bf16_backbone: ClipBackbone) -> None:
    frames = _frames()
    out = {}
    for name, backbone in (("fp32", tiny_backbone), ("bf16", bf16_backbone)):
        pixels = backbone.pixels_from_frames(frames).view(2, 12, 3, 224, 224)
        out[name] = encoder(backbone).encode(pixels, with_tokens=True)
    fp32, bf16 = out["fp32"], out["bf16"]
    assert bf16.embeddings.dtype == torch.float32 and bf16.frame_embeddings.dtype == torch.float32
    assert _cosine(bf16.embeddings, fp32.embeddings).min() >= 0.99
    assert _cosine(bf16.frame_embeddings, fp32.frame_embeddings).min() >= 0.99
    assert bf16.cls_attention.dtype == torch.float32
    torch.testing.assert_close(bf16.cls_attention, fp32.cls_attention, atol=0.02, rtol=0.1)
    assert bf16.tokens_per_segment == fp32.tokens_per_segment
    # Summaries cluster in float32 on the tokens cast up, and are stored as float32.
    times = torch.arange(12, dtype=torch.float64)
    summary = summarize("holitom", bf16.patch_tokens[0], bf16.cls_attention[0], times)
    assert summary.tokens.dtype == torch.float32 and torch.isfinite(summary.tokens).all()


def test_bf16_text_signatures_and_projection_agree(tiny_backbone: ClipBackbone, bf16_backbone: ClipBackbone) -> None:
    texts = ["a dog", "a red ball rolling across the floor of a kitchen", "snow"]
    assert _cosine(bf16_backbone.encode_text(texts), tiny_backbone.encode_text(texts)).min() >= 0.99
    # The late reranker projects stored float32 summary tokens with the bf16 model.
    tokens = torch.randn(5, tiny_backbone.width, generator=torch.Generator().manual_seed(2))
    assert _cosine(bf16_backbone.project(tokens), tiny_backbone.project(tokens)).min() >= 0.99
    # B-VLLM's frame signatures run at the model's dtype and drop the same repeated frames.
    frames = _frames(seed=3)[:6].repeat_interleave(2, dim=0)  # each frame twice
    times = torch.arange(12, dtype=torch.float64)
    spans = [drop_static_frames(b, b.pixels_from_frames(frames), times, 0.15) for b in (tiny_backbone, bf16_backbone)]
    assert torch.equal(spans[0].first, spans[1].first) and len(spans[0].first) == 6


# ----- exact short text sequences ------------------------------------------------------------------
def _lengths_seen(monkeypatch: pytest.MonkeyPatch, transformer: torch.nn.Module) -> list[int]:
    seen: list[int] = []
    forward = transformer.forward

    def spy(x, *args, **kwargs):
        seen.append(x.shape[1])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(transformer, "forward", spy)
    return seen


def test_text_runs_to_the_last_eot_and_equals_the_full_context(
    tiny_backbone: ClipBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_backbone.model
    assert causal_eot_tower(model) is model
    long = " ".join(["word"] * 120)  # truncated to 77 tokens, EOT at the last position
    tokens = tiny_backbone.tokenizer(["a dog", "a red ball rolling across a kitchen floor", long, ""])
    assert int(tokens.argmax(-1).max()) == 76
    with torch.inference_mode():
        reference = model.encode_text(tokens)
        seen = _lengths_seen(monkeypatch, model.transformer)
        torch.testing.assert_close(encode_text_tokens(model, tokens), reference, atol=1e-5, rtol=1e-5)
        short = tokens[:2]
        torch.testing.assert_close(encode_text_tokens(model, short), model.encode_text(short), atol=1e-5, rtol=1e-5)
    eot = int(short.argmax(-1).max())
    assert seen[:2] == [77, eot + 1] and eot + 1 < 20  # the short batch ran only to its last EOT


def test_non_causal_tower_takes_the_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SigLIP-style tower (no causal mask, last-token pooling) is recognised from the model."""
    config = json.loads((TINY_CONFIG_DIR / f"{TINY_MODEL}.json").read_text())
    config["text_cfg"].update(no_causal_mask=True, pool_type="last")
    (tmp_path / "vidseek-tiny-noncausal.json").write_text(json.dumps(config))
    backbone = load_backbone("vidseek-tiny-noncausal", "random", "cpu", tmp_path)
    model = backbone.model
    assert causal_eot_tower(model) is None
    tokens = backbone.tokenizer(["a dog", "a cat on a mat"])
    with torch.inference_mode():
        seen = _lengths_seen(monkeypatch, model.transformer)
        torch.testing.assert_close(encode_text_tokens(model, tokens), model.encode_text(tokens))
    assert seen == [77, 77]


def test_layer_norm_of_bf16_activations_matches_open_clips_float32_norm():
    """vit_blocks.layer_norm (torch's mixed-type kernel, no copies) equals open_clip's LayerNormFp32
    (copy to float32, norm, copy back) up to one bf16 rounding step, and is the module itself in fp32."""
    from open_clip.transformer import LayerNormFp32

    from models.vit_blocks import layer_norm

    torch.manual_seed(0)
    norm = LayerNormFp32(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 17, 64) * 4 + 1).to(torch.bfloat16)
    out = layer_norm(norm, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x).float(), rtol=2**-7, atol=2**-7)
    x32 = x.float()
    assert torch.equal(layer_norm(norm, x32), norm(x32))
