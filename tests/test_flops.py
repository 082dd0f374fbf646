"""``models.flops``: the counter's formulas against hand counts and the analytic models, and the analytic
models against the papers' numbers."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from models.encoders import FullClipEncoder
from models.flops import (
    VitShape,
    analytic_prefill_flops,
    block_macs,
    count_flops,
    count_macs,
    full_clip_loads,
    prefill_layer_lengths,
    tempme_loads,
    vit_macs,
)
from models.holitom import HoliTomParams, holitom
from models.rerankers.prefill import InnerMergeParams
from models.tempme import TempMeConfig, TempMeEncoder, plan_layers

# open_clip ViT-B-32: width 768, 12 heads, MLP 3072, 12 blocks, 7 x 7 patches of 3 x 32 x 32, proj 768 -> 512.
VIT_B_32 = VitShape(width=768, heads=12, mlp_width=3072, depth=12, num_patches=49, patch_dim=3072, projection=768 * 512)


def _pixels(segments: int, frames: int) -> torch.Tensor:
    return torch.randn(segments, frames, 3, 224, 224, generator=torch.Generator().manual_seed(segments * 100 + frames))


def test_analytic_count_reproduces_tempmes_reference_for_vit_b_32():
    """TempMe reports 51.5 G MACs (full CLIP) and 33.3 G MACs (TempMe) for a 12-frame ViT-B/32
    clip, transformer blocks only."""
    full = sum(block_macs(VIT_B_32, load) for load in full_clip_loads(VIT_B_32, 12)) / 1e9
    plans = plan_layers(TempMeConfig(), 12, 50, 12)
    tempme = sum(block_macs(VIT_B_32, load) for load in tempme_loads(VIT_B_32, plans, 1, 12)) / 1e9
    assert round(full, 1) == 51.5
    assert round(tempme, 1) == 33.3
    whole_full = vit_macs(VIT_B_32, 12, full_clip_loads(VIT_B_32, 12)).total
    whole_tempme = vit_macs(VIT_B_32, 12, tempme_loads(VIT_B_32, plans, 1, 12)).total
    assert whole_tempme / whole_full <= 0.66


def test_counted_macs_equal_the_analytic_count_for_full_clip(tiny_backbone):
    shape = VitShape.of(tiny_backbone)
    pixels = _pixels(2, 3)
    expected = vit_macs(shape, 6, full_clip_loads(shape, 6)).total
    _, fused = count_macs(lambda: FullClipEncoder(tiny_backbone).encode(pixels))
    no_merging = TempMeConfig(image_r=0, clip_layers=(), clip_sizes=())  # CLIP block by block (models.vit_blocks)
    _, by_block = count_macs(lambda: TempMeEncoder(tiny_backbone, no_merging).encode(pixels))
    assert fused.total == by_block.total == expected
    assert "aten._native_multi_head_attention" in fused.by_op  # open_clip's fused path was counted


@pytest.mark.parametrize("frames", [1, 6, 8, 12])
def test_counted_macs_equal_the_analytic_count_for_tempme(tiny_backbone, frames: int):
    shape = VitShape.of(tiny_backbone)
    encoder = TempMeEncoder(tiny_backbone)
    loads = tempme_loads(shape, encoder.plan(frames), 2, frames)
    _, counted = count_macs(lambda: encoder.encode(_pixels(2, frames)))
    analytic = vit_macs(shape, 2 * frames, loads)
    assert counted.total == analytic.total
    assert analytic.merging > 0


@pytest.mark.parametrize("points", [10, 60])  # both torch.cdist kernels
def test_cdist_is_counted(points: int):
    x, y = torch.randn(3, points, 16), torch.randn(3, 7, 16)
    _, counted = count_macs(lambda: torch.cdist(x, y))
    assert counted.total == 3 * points * 7 * 16


def test_holitom_with_the_inner_merge_needs_under_a_tenth_of_the_full_prefill_on_llava_ov_7b_shapes() -> None:
    """32 frames x 196 pooled tokens (LLaVA-OV's video input), HoliTom at retain 0.10 over them, and the
    inner merge at k=18, r=0.5 on Qwen2-7B's shapes (LLaVA-OV-7B's LLM): the paper reports 6.9 %."""
    qwen2_7b = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(32, 196, 16, generator=g)
    kept = holitom(tokens, torch.rand(32, 196, generator=g), HoliTomParams(retain_ratio=0.10)).tokens.shape[0]
    text = 60
    full = analytic_prefill_flops(qwen2_7b, text, 32 * 196 + 1, None)
    ratio = analytic_prefill_flops(qwen2_7b, text, kept + 1, InnerMergeParams(18, 0.5)) / full
    assert 0.05 < ratio <= 0.10
    assert prefill_layer_lengths(text, kept + 1, 28, InnerMergeParams(18, 0.5))[17:19] == [text + kept + 1, text + round((kept + 1) / 2)]


def test_flops_are_twice_the_macs() -> None:
    x, y = torch.randn(5, 8), torch.randn(8, 3)
    assert count_flops(lambda: x @ y)[1] == 2 * count_macs(lambda: x @ y)[1].total == 2 * 5 * 8 * 3
