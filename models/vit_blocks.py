"""Run open_clip ViT residual blocks step by step, as pure functions over tensors.

Token-reduction methods (ToMe, TempMe, HoliTom) need what the fused modules hide: the
attention keys (ToMe's merge metric), the attention map (CLS attention), and proportional
attention (``log(size)`` added to the logits of every key). These functions recompute one
``open_clip.transformer.ResidualAttentionBlock`` exactly: q, k, v from the
``nn.MultiheadAttention`` ``in_proj_weight``/``in_proj_bias``, ``head_dim ** -0.5`` scaling,
softmax, ``out_proj``, then the MLP -- with the same weights and no copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AttentionOutput:
    """Result of the attention half of a block.

    Attributes:
        x: ``[B, L, W]`` residual stream after ``x + ls_1(attn(ln_1(x)))``.
        metric: ``[B, L, W / H]`` keys averaged over heads (ToMe's merge metric).
        attention: ``[B, H, L, L]`` softmax attention, only when requested.
    """

    x: torch.Tensor
    metric: torch.Tensor
    attention: torch.Tensor | None = None


def _check_block(block: nn.Module) -> nn.MultiheadAttention:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first:
        raise TypeError(
            "vit_blocks supports open_clip ResidualAttentionBlock (batch-first nn.MultiheadAttention); "
            f"got {type(block).__name__}"
        )
    return attn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, W]`` -> ``[B, H, L, W / H]``."""
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` -> ``[B, L, H * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` over ``x`` ``[..., W]``, computed in float32, returned in ``x``'s dtype.

    With bf16/fp16 weights open_clip's mixed precision uses ``LayerNormFp32``, which copies the
    residual stream to float32 and the output back -- two full copies per norm, four per block
    (bf16 TempMe 1.04x faster without them on a 2-core AMX CPU). Torch's CPU ``layer_norm``
    takes bf16/fp16 input with the float32 weights directly and computes in float32 inside, so on
    the CPU the same norm runs without the copies (equal up to float32 summation order; the output
    is rounded to ``x``'s dtype in both). Elsewhere, and in float32, the module itself runs."""
    if x.device.type != "cpu" or x.dtype == norm.weight.dtype:
        return norm(x)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys, values ``[B, H, L, W / H]`` of ``block`` for the residual stream ``x`` ``[B, L, W]``
    (``ln_1`` is applied here)."""
    attn = _check_block(block)
    q, k, v = F.linear(layer_norm(block.ln_1, x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return split_heads(q, attn.num_heads), split_heads(k, attn.num_heads), split_heads(v, attn.num_heads)


def size_bias(size: torch.Tensor | None) -> torch.Tensor | None:
    """Proportional attention: token sizes ``[B, L, 1]`` -> additive float32 logit bias ``[B, 1, 1, L]``.

    Kept in float32 also when the model runs in bf16/fp16 (``scaled_dot_product_attention`` takes
    a float32 mask with lower-precision queries): ``log(size)`` is not rounded to 8 bits."""
    if size is None:
        return None
    return size.float().log()[:, None, None, :, 0]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    size: torch.Tensor | None = None,
    return_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention with optional proportional attention.

    Args:
        q, k, v: ``[B, H, L, d]``.
        size: ``[B, L, 1]`` number of original tokens each token stands for, or None.
        return_attention: also return the ``[B, H, L, L]`` softmax map (slower path).
    Returns:
        ``([B, H, L, d] in q's dtype, attention or None)``; the returned ``[B, H, L, L]`` attention
        is float32: the logits are summed with the bias and soft-maxed in float32.
    """
    bias = size_bias(size)
    if not return_attention:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    logits = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).float()
    if bias is not None:
        logits = logits + bias
    attention = logits.softmax(dim=-1)
    return attention.to(v.dtype) @ v, attention


def run_attention(
    block: nn.Module,
    x: torch.Tensor,
    size: torch.Tensor | None = None,
    return_attention: bool = False,
) -> AttentionOutput:
    """Attention half of ``block``: ``x + ls_1(out_proj(attn(ln_1(x))))`` over ``x`` ``[B, L, W]``."""
    attn = _check_block(block)
    q, k, v = qkv(block, x)
    out, attention = attend(q, k, v, size=size, return_attention=return_attention)
    out = F.linear(merge_heads(out), attn.out_proj.weight, attn.out_proj.bias)
    return AttentionOutput(x=x + block.ls_1(out), metric=k.mean(dim=1), attention=attention)


def run_mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MLP half of ``block``: ``x + ls_2(mlp(ln_2(x)))`` over ``[B, L, W]``."""
    return x + block.ls_2(block.mlp(layer_norm(block.ln_2, x)))


def run_block(
    block: nn.Module,
    x: torch.Tensor,
    size: torch.Tensor | None = None,
    return_attention: bool = False,
) -> AttentionOutput:
    """A whole residual block over ``[B, L, W]``; ``metric``/``attention`` are those of its attention."""
    a = run_attention(block, x, size=size, return_attention=return_attention)
    return AttentionOutput(x=run_mlp(block, a.x), metric=a.metric, attention=a.attention)
