"""Operation counts, one place for all of them (pure: torch's own counter and arithmetic, no models).

* Counting: :func:`count_flops` / :func:`count_macs` run a call under ``torch.utils.flop_counter.FlopCounterMode``
  completed with formulas (:data:`FORMULAS`) for the kernels vidseek's models reach on CPU that it has no
  formula for -- ``nn.MultiheadAttention``'s fused inference kernel (open_clip's blocks under
  ``inference_mode``), the CPU kernel of ``F.scaled_dot_product_attention`` (the CUDA ones are covered) and
  ``torch.cdist`` (HoliTom's density) -- so a full-CLIP forward is not undercounted by its attention (about
  30 % on ViT-B/32) while an encoder running attention step by step would not be. The counter's
  convention: a multiply-add is 2 FLOPs (1 MAC; fvcore-style tables count it as 1).
* Analytic models of the same counts: an open_clip ViT forward from its token schedule (full CLIP, TempMe;
  :func:`vit_macs`) and a Qwen2 prefill with HoliTom's inner-LLM merge (:func:`analytic_prefill_flops`).
  The tests check each against the counter, exactly.

Used by the evaluation (``indexer.evaluation``), the benchmarks and the LLM reranker's tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from models.backbone import ClipBackbone
    from models.tempme import LayerPlan

T = TypeVar("T")
aten = torch.ops.aten


# ----- counting ---------------------------------------------------------------------------------
def native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """``aten._native_multi_head_attention`` on ``[B, Lq, W]`` queries and ``[B, Lk, W]`` keys/values
    (batch first): the q, k, v and output projections (``W x W`` each) plus ``Q K^T`` and ``A V`` over all heads."""
    *batch, length, width = query_shape
    source = key_shape[-2]
    b = batch[0] if batch else 1
    projections = length * width * width + 2 * source * width * width + length * width * width
    attention = 2 * length * source * width
    return 2 * b * (projections + attention)


def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``: ``softmax(q k^T) v`` over ``q [B, H, L, d]``,
    ``k [B, H, S, d]``, ``v [B, H, S, dv]`` (the counter's own SDPA formula)."""
    b, h, length, d = query_shape
    source, dv = key_shape[2], value_shape[3]
    return 2 * b * h * length * source * (d + dv)


def cdist_flops(x1_shape, x2_shape, *args, out_shape=None, **kwargs) -> int:
    """Euclidean distances between ``[..., P, D]`` and ``[..., R, D]``: ``P * R * D`` MACs per batch, the
    cost of the ``x1 @ x2^T`` they are computed with (norms are left out)."""
    *batch, p, d = x1_shape
    return 2 * math.prod(batch) * p * x2_shape[-2] * d


# FlopCounterMode decomposes composite ops and counts the kernels they reach; these are the kernels
# vidseek's models reach on CPU that it has no formula for.
FORMULAS = {
    aten._native_multi_head_attention: native_mha_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops,
    aten._euclidean_dist: cdist_flops,  # torch.cdist above 25 points
    aten._cdist_forward: cdist_flops,  # torch.cdist up to 25 points
}


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one call.

    Attributes:
        total: all counted MACs.
        by_op: MACs per aten op (``"aten.addmm"``...).
    """

    total: int
    by_op: dict[str, int]

    @property
    def gflops(self) -> float:
        return 2 * self.total / 1e9


def count_macs(fn: Callable[[], T]) -> tuple[T, MacCount]:
    """Run ``fn()`` under the counter (plus :data:`FORMULAS`); returns its result and the MACs of its matrix
    products, convolutions and attention. Element-wise work (layer norm, softmax, GELU, the additions) is
    not counted, as in the usual FLOP counts of ViTs. The counter intercepts every op in Python, so the
    call runs slower: never time it."""
    with FlopCounterMode(display=False, custom_mapping=FORMULAS) as counter:
        result = fn()
    by_op = {str(op): flops // 2 for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return result, MacCount(total=counter.get_total_flops() // 2, by_op=by_op)


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """:func:`count_macs` in FLOPs (2 per multiply-add): ``fn()``'s result and its FLOPs."""
    result, macs = count_macs(fn)
    return result, 2 * macs.total


# ----- analytic: an open_clip ViT ---------------------------------------------------------------
@dataclass(frozen=True)
class VitShape:
    """What the MAC count of an open_clip ViT depends on.

    Attributes:
        width: residual width ``W``; heads: attention heads; mlp_width: MLP hidden width.
        depth: blocks; num_patches: ``N`` per frame; patch_dim: ``3 * P * P`` inputs per patch.
        projection: ``W * E`` MACs to project one token (0 without ``proj``).
    """

    width: int
    heads: int
    mlp_width: int
    depth: int
    num_patches: int
    patch_dim: int
    projection: int

    @classmethod
    def of(cls, backbone: ClipBackbone) -> VitShape:
        visual = backbone.visual
        block = visual.transformer.resblocks[0]
        kh, kw = visual.conv1.kernel_size
        return cls(
            width=backbone.width,
            heads=block.attn.num_heads,
            mlp_width=block.mlp.c_fc.out_features,
            depth=len(visual.transformer.resblocks),
            num_patches=backbone.num_patches,
            patch_dim=visual.conv1.in_channels * kh * kw,
            projection=0 if visual.proj is None else visual.proj.numel(),
        )

    def patch_embed(self, frames: int) -> int:
        """MACs of ``conv1`` over ``frames`` frames (also the cost of B-VLLM's signature)."""
        return frames * self.num_patches * self.patch_dim * self.width


@dataclass(frozen=True)
class Matching:
    """One ToMe bipartite matching: ``sequences`` times ``|A| x |B|`` cosines of ``dim`` features."""

    sequences: int
    a: int
    b: int
    dim: int

    @classmethod
    def over(cls, sequences: int, length: int, protected: int, dim: int) -> Matching:
        """Matching of ``length`` tokens whose first ``protected`` are held out; A and B alternate
        over the rest with ``models.merging``'s parity rule."""
        a_start = protected % 2
        rest = length - protected
        return cls(sequences, len(range(a_start, rest, 2)), len(range(1 - a_start, rest, 2)), dim)


@dataclass(frozen=True)
class BlockLoad:
    """Work of one ViT block: ``sequences`` sequences of ``attended`` tokens through attention
    and ``mlp`` tokens through the MLP (fewer when tokens merge in between), plus the matchings."""

    sequences: int
    attended: int
    mlp: int
    matchings: tuple[Matching, ...] = ()


@dataclass(frozen=True)
class VitMacs:
    """Analytic MACs of a ViT forward, by part."""

    patch_embed: int
    blocks: int
    merging: int
    projection: int

    @property
    def total(self) -> int:
        return self.patch_embed + self.blocks + self.merging + self.projection


def block_macs(shape: VitShape, load: BlockLoad) -> int:
    """MACs of one block without merging: q, k, v and output projections ``4 L W^2``,
    ``q k^T`` and ``attention @ v`` ``2 L^2 W``, MLP ``2 L' W H``."""
    w = shape.width
    attention = 4 * load.attended * w * w + 2 * load.attended**2 * w
    return load.sequences * (attention + 2 * load.mlp * w * shape.mlp_width)


def vit_macs(shape: VitShape, frames: int, loads: Sequence[BlockLoad]) -> VitMacs:
    """Analytic MACs of ``frames`` frames through ``conv1``, the blocks with ``loads``, and the
    projection of each frame's CLS token."""
    return VitMacs(
        patch_embed=shape.patch_embed(frames),
        blocks=sum(block_macs(shape, load) for load in loads),
        merging=sum(m.sequences * m.a * m.b * m.dim for load in loads for m in load.matchings),
        projection=frames * shape.projection,
    )


def full_clip_loads(shape: VitShape, frames: int) -> list[BlockLoad]:
    """Every block sees ``1 + N`` tokens per frame."""
    tokens = 1 + shape.num_patches
    return [BlockLoad(frames, tokens, tokens)] * shape.depth


def tempme_loads(shape: VitShape, plans: Sequence[LayerPlan], segments: int, frames: int) -> list[BlockLoad]:
    """Per-block work of TempMe from its token schedule (:func:`models.tempme.plan_layers`): the
    cross-clip matching on the joined clip's hidden states (``W`` features), then attention on
    the merged tokens, the intra-clip matching on the keys averaged over heads (``W / H``), and
    the MLP on what is left. All CLS tokens of a clip are protected."""
    loads = []
    for plan in plans:
        sequences, cls = segments * plan.clips, frames // plan.clips
        joined, attended, after = plan.tokens
        matchings = []
        if plan.cross_r > 0:
            matchings.append(Matching.over(sequences, joined, cls, shape.width))
        if plan.intra_r > 0:
            matchings.append(Matching.over(sequences, attended, cls, shape.width // shape.heads))
        loads.append(BlockLoad(sequences, attended, after, tuple(matchings)))
    return loads


# ----- analytic: a Qwen2 prefill with HoliTom's inner merge ----------------------------------------
class InnerMerge(Protocol):
    """HoliTom's inner-LLM merge (``models.rerankers.prefill.InnerMergeParams``): at decoder layer ``layer``
    a fraction ``ratio`` of the visual span is merged away."""

    layer: int
    ratio: float


def prefill_layer_lengths(
    text_tokens: int, visual_tokens: int, num_layers: int, inner: InnerMerge | None
) -> list[int]:
    """Tokens each decoder layer of a batch-1 prefill sees: ``text + visual`` before the inner-merge
    layer, ``text + round(visual * (1 - r))`` from it on."""
    full = text_tokens + visual_tokens
    if inner is None:
        return [full] * num_layers
    merged = text_tokens + round(visual_tokens * (1 - inner.ratio))
    return [full] * inner.layer + [merged] * (num_layers - inner.layer)


def analytic_prefill_flops(text_config: Any, text_tokens: int, visual_tokens: int, inner: InnerMerge | None) -> int:
    """Matrix-product FLOPs of :func:`models.rerankers.llava.prefill` for one sequence, counted the way ``FlopCounterMode`` counts
    them (``2 * m * n * k`` per product; attention as two full ``L x L`` products per head, causality not
    discounted) -- decoder layers, the LM head on the last token and, with the inner merge, its extra
    work: the last-token attention row of layer ``k - 1`` and the merge's cosine similarities.

    Args:
        text_config: a ``Qwen2Config`` (hidden_size, heads, key/value heads, intermediate_size, vocab_size).
        text_tokens: prompt tokens around the video.
        visual_tokens: the visual span, newline included.
        inner: the inner merge, or None.
    """
    d = text_config.hidden_size
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    per_token = 2 * (d * q_out + 2 * d * kv_out + q_out * d + 3 * d * text_config.intermediate_size)
    lengths = prefill_layer_lengths(text_tokens, visual_tokens, text_config.num_hidden_layers, inner)
    total = sum(n * per_token + 4 * heads * n * n * head_dim for n in lengths) + 2 * d * text_config.vocab_size
    if inner is not None:
        n = lengths[inner.layer - 1]
        keep = round(visual_tokens * (1 - inner.ratio))
        total += 2 * d * q_out + 2 * n * d * kv_out + 2 * heads * n * head_dim  # last-token attention row
        if keep < visual_tokens:
            total += 2 * (visual_tokens - keep) * keep * d  # cosine similarities of merged vs kept tokens
    return total
