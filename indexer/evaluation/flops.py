"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``, completed for two fused
attention kernels it has no formula for.

Out of the box the counter sees neither

* ``aten._native_multi_head_attention``: ``nn.MultiheadAttention``'s inference fast path, taken
  by open_clip's own ViT blocks under ``inference_mode`` (projections and attention in one
  kernel), nor
* ``aten._scaled_dot_product_flash_attention_for_cpu``: what ``F.scaled_dot_product_attention``
  runs on CPU (the CUDA kernels are covered),

so a full-CLIP forward would be undercounted by its attention (on ViT-B/32 about 30 %) while
an encoder that runs attention step by step would not be. Both are added here with the
counter's own convention: a multiply-add is 2 FLOPs (fvcore-style tables count it as 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

T = TypeVar("T")
aten = torch.ops.aten


def native_mha_flop(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """``_native_multi_head_attention`` on ``[B, Lq, E]`` queries and ``[B, Lk, E]`` keys/values:
    the q, k, v and output projections (``E x E`` each) plus ``Q K^T`` and ``A V`` over all heads."""
    *batch, lq, e = query_shape
    lk = key_shape[-2]
    b = batch[0] if batch else 1
    projections = 2 * b * e * e * (2 * lq + 2 * lk)
    attention = 2 * 2 * b * lq * lk * e
    return projections + attention


def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``_scaled_dot_product_flash_attention_for_cpu`` on ``[B, H, L, D]``: the counter's own SDPA formula."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FORMULAS = {
    aten._native_multi_head_attention: native_mha_flop,
    aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flop,
}


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` under a FLOP counter; returns its result and the FLOPs it took.

    The counter intercepts every op in Python, so the call runs slower: never time it.
    """
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        result = fn()
    return result, counter.get_total_flops()
