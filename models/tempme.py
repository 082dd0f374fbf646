"""TempMe: temporal token merging inside the CLIP ViT (Shen et al., "Temporal Token Merging for
Efficient Text-Video Retrieval", ICLR 2025), training-free, with optional trained weights.

Every number and step below was checked against TempMe's official code (LunarShen/TempMe):
``main.py`` (defaults) and its ``tvr/models`` package -- ``modeling.py`` (``VTRModel.__init__``
token bookkeeping and ``get_video_feat``), ``module_tome_patch.py`` (``ToMeBlock``,
``ToMeAttention``), ``module_tome_merge.py`` (matching, see :mod:`models.merging`) and
``module_clip.py`` (LoRA and positional parameters). The ``tvr/models`` files were read in
public copies of that package (e.g. GitHub 940789525/attn_weights), the official repository
snapshot at hand holding only ``README.md`` and ``main.py``.

Per block ``i`` of the ViT, for a segment of ``T`` frames (``main.py`` defaults in brackets):

* ImgMe, blocks before the first ClipMe block: attention, then ToMe inside every frame with
  ``r = image_r`` [``--tome_r 2``] using the keys averaged over heads, then the MLP.
  ViT-B/32: 50 tokens per frame become 34 after block 7.
* ClipMe, blocks ``clip_layers`` [``--merge_layer 8-9-10``] with clip sizes ``clip_sizes``
  [``--merge_frame_num 2-2-3``]: ``k`` consecutive clips are joined into one (all CLS tokens
  first, in frame order, then the patch tokens clip by clip); ``int(L * k * 0.30)``
  [``--merge_token_proportion 30-10``] tokens are merged across the new clip using the
  block's *input* hidden states as metric (with trained weights, the video positional
  embedding of each clip is added to the tokens after the metric is taken and before they
  merge, only when a cross-clip merge runs, as in ``ToMeBlock``); attention (proportional,
  [``--tome_propattn``]);
  ``int((L * k - r_cross) * 0.10)`` tokens are merged inside the clip using the keys; MLP.
  Both counts are capped at half the mergeable tokens exactly like ``get_video_feat``.
* Blocks after the first ClipMe block that are not ClipMe blocks (block 11): attention,
  intra-clip merge of ``int(L * 0.10)`` tokens (capped likewise), MLP.
* The CLS tokens are protected and never merged; the ``T`` CLS tokens of the last block go
  through ``ln_post`` and ``proj``, are L2-normalised and averaged (``get_video_avg_feat``)
  and the mean is normalised again (cosine retrieval is unchanged by that last step).

ViT-B/32, 12 frames: 34 tokens per frame after block 7, then (joined -> after the
cross-clip merge -> after the block) 68 -> 48 -> 44, 88 -> 62 -> 56, 168 -> 118 -> 107, and
97 after block 11 (``VTRModel.__init__``'s ``patch_list``).

Training-free TempMe is frozen CLIP plus this merging: TempMe's trained parameters, LoRA
``B`` matrices and video positional embeddings, start at zero. Trained ones can be loaded,
see :func:`models.factory.tempme_encoder`.

Segments whose length ``T`` is not a multiple of the clip sizes (the official code asserts
it is; a video's last segment is usually shorter than 12 frames): at each ClipMe block the
clip size used is the largest divisor of the current number of clips that does not exceed
the configured size, so all clips of a segment keep the same length and the batch stays one
tensor. T=12 gives 2, 2, 3; T=6 gives 2, 1, 3; T=8 gives 2, 2, 2; T=1, 5, 7, 13 give 1, 1, 1.
A ClipMe block with clip size 1 merges only inside each clip, ``int(L * 0.10)`` tokens, like
block 11 (the official formula would subtract a cross-clip merge that does not happen).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.encoders import SegmentEncoding, pool_frames
from models.merging import bipartite_soft_matching, merge_source, merge_wavg, source_owner
from models.vit_blocks import run_attention, run_mlp


# ----- configuration and token schedule ------------------------------------------------------
@dataclass(frozen=True)
class TempMeConfig:
    """TempMe hyper-parameters; defaults are those of the official ``main.py`` for ViT-B/32.

    Attributes:
        image_r: tokens merged per frame in every ImgMe block (``--tome_r``).
        clip_layers: ClipMe blocks, ascending (``--merge_layer``).
        clip_sizes: clips joined at each ClipMe block (``--merge_frame_num``).
        cross_clip_ratio: share of a joined clip's tokens merged across clips (``30`` of
            ``--merge_token_proportion``).
        intra_clip_ratio: share of a clip's tokens merged inside it after attention (``10``).
        prop_attn: proportional attention, ``log(size)`` added to the key logits
            (``--tome_propattn``).
    """

    image_r: int = 2
    clip_layers: tuple[int, ...] = (8, 9, 10)
    clip_sizes: tuple[int, ...] = (2, 2, 3)
    cross_clip_ratio: float = 0.30
    intra_clip_ratio: float = 0.10
    prop_attn: bool = True

    def __post_init__(self) -> None:
        if len(self.clip_layers) != len(self.clip_sizes):
            raise ValueError("clip_layers and clip_sizes must have the same length")
        if list(self.clip_layers) != sorted(set(self.clip_layers)) or any(l < 0 for l in self.clip_layers):
            raise ValueError(f"clip_layers must be distinct, ascending and >= 0, got {self.clip_layers}")
        if any(k < 1 for k in self.clip_sizes) or self.image_r < 0:
            raise ValueError("clip_sizes must be >= 1 and image_r >= 0")
        if not (0 <= self.cross_clip_ratio < 1 and 0 <= self.intra_clip_ratio < 1):
            raise ValueError("merge ratios must lie in [0, 1)")


@dataclass(frozen=True)
class LayerPlan:
    """What TempMe does in one ViT block for a segment.

    Attributes:
        clip_size: consecutive clips joined into one before the block (1: none).
        cross_r: tokens merged across the joined clip before attention (metric: block input).
        intra_r: tokens merged inside each clip after attention (metric: keys).
        clips: clips per segment during the block.
        tokens: tokens per clip (joined, during attention, after the block).
    """

    clip_size: int
    cross_r: int
    intra_r: int
    clips: int
    tokens: tuple[int, int, int]


def _clip_size(clips: int, wanted: int) -> int:
    """Largest divisor of ``clips`` not above ``wanted`` (all clips of a segment stay equal)."""
    return max(d for d in range(1, min(wanted, clips) + 1) if clips % d == 0)


def plan_layers(config: TempMeConfig, frames: int, tokens_per_frame: int, depth: int) -> tuple[LayerPlan, ...]:
    """Token schedule of a ``frames``-frame segment through a ``depth``-block ViT whose frames
    have ``tokens_per_frame`` tokens (CLS included). Follows ``get_video_feat`` of TempMe's
    ``tvr/models/modeling.py``, including its caps at half of the mergeable tokens."""
    if frames < 1:
        raise ValueError("a segment needs at least one frame")
    if config.clip_layers and config.clip_layers[-1] >= depth:
        raise ValueError(f"clip_layers {config.clip_layers} do not fit a {depth}-block ViT")
    sizes = dict(zip(config.clip_layers, config.clip_sizes))
    first_clip_layer = config.clip_layers[0] if config.clip_layers else depth
    clips, length, cls = frames, tokens_per_frame, 1  # per clip
    plans = []
    for layer in range(depth):
        k = _clip_size(clips, sizes[layer]) if layer in sizes else 1
        cross_r = 0
        if k > 1:
            cross_r = min(int(length * k * config.cross_clip_ratio), (length - cls) * k // 2)
            clips, length, cls = clips // k, length * k, cls * k
        joined, attended = length, length - cross_r
        if layer < first_clip_layer:
            intra_r = min(config.image_r, (attended - cls) // 2)
        else:
            intra_r = min(int(attended * config.intra_clip_ratio), (attended - cls) // 2)
        length = attended - intra_r
        plans.append(LayerPlan(k, cross_r, intra_r, clips, (joined, attended, length)))
    return tuple(plans)


# ----- token bookkeeping -------------------------------------------------------------------
def join_clips(x: torch.Tensor, k: int, cls: int) -> torch.Tensor:
    """``[M * k, L, C]`` -> ``[M, k * L, C]``: join ``k`` consecutive clips, putting the ``k * cls``
    CLS tokens first (clip order), then the other tokens clip by clip (TempMe's ``ToMeBlock``)."""
    m, length, c = x.shape[0] // k, x.shape[1], x.shape[2]
    x = x.view(m, k, length, c)
    return torch.cat([x[:, :, :cls].reshape(m, k * cls, c), x[:, :, cls:].reshape(m, -1, c)], dim=1)


def join_sources(source: torch.Tensor, k: int, cls: int) -> torch.Tensor:
    """Source matrices ``[M * k, L, S]`` -> ``[M, k * L, k * S]``: like :func:`join_clips` over
    the tokens, while the original tokens of the ``k`` clips are concatenated (block diagonal)."""
    mk, length, s = source.shape
    eye = torch.eye(k, dtype=source.dtype, device=source.device)
    blocks = source.view(mk // k, k, length, 1, s) * eye.view(1, k, 1, k, 1)
    return join_clips(blocks.reshape(mk, length, k * s), k, cls)


def _clip_positions(table: torch.Tensor, clips: int, frames: int, trained_frames: int) -> torch.Tensor:
    """Rows of a ``[P, W]`` video positional table for the ``clips`` equal clips of a
    ``frames``-frame segment: the row of the trained clip in which each clip starts, the
    last row past the trained length. For ``frames == trained_frames`` this is row ``p`` for
    clip ``p``, the official use; the official code has no other segment length."""
    starts = torch.arange(clips, device=table.device) * (frames // clips)
    rows = (starts * table.shape[0] // trained_frames).clamp(max=table.shape[0] - 1)
    return table[rows]


@dataclass(frozen=True)
class TempMeTokens:
    """State after the last block for ``B`` segments of ``T`` frames, ``U`` clips each of ``L``
    tokens, a clip holding ``T / U`` frames.

    Attributes:
        hidden: ``[B * U, L, W]`` last-block output (before ``ln_post``); the first ``T / U``
            tokens of a clip are its frames' CLS tokens in frame order.
        size: ``[B * U, L, 1]`` original tokens held by each token (ones without merging).
        tokens_per_layer: per block, tokens per clip (joined, during attention, after the
            block) read off the tensors, comparable with :attr:`LayerPlan.tokens`.
        source: ``[B * U, L, (T / U) * (1 + N)]`` 0/1 map to the clip's original tokens (frame
            by frame, CLS first), only with ``with_tokens``.
        last_source: the same before the last block's merge (the tokens attention saw).
        last_size: ``[B * U, L_att, 1]`` sizes the last attention saw.
        cls_attention: ``[B * U, T / U, L_att]`` last-block attention of each frame's CLS query
            over its clip's tokens, averaged over heads, only with ``with_tokens``.
    """

    hidden: torch.Tensor
    size: torch.Tensor
    tokens_per_layer: tuple[tuple[int, int, int], ...]
    source: torch.Tensor | None = None
    last_source: torch.Tensor | None = None
    last_size: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None


# ----- the encoder -------------------------------------------------------------------------
class TempMeEncoder:
    """TempMe over ``backbone``'s ViT: ``T`` frames per segment, CLS tokens of all frames kept.

    Args:
        backbone: open_clip ViT backbone (not modified: trained LoRA is folded into a copy by
            :func:`models.factory.tempme_encoder`, which builds the encoder over that copy).
        config: merge schedule; None for the official defaults.
        positions: trained video positional embeddings, ClipMe block -> ``[P, W]``, for
            ``config.clip_layers`` (none: training-free).

    Precision: the matrices run at the backbone's dtype; the bookkeeping does not round -- token
    sizes are float32, ``log(size)`` of proportional attention is added in float32, and the
    size-weighted averages, the merge metric's normalisation and similarities, and the returned
    attention's softmax are computed in float32 (see :mod:`models.merging`, :mod:`models.vit_blocks`).
    """

    name = "tempme"

    def __init__(
        self, backbone: ClipBackbone, config: TempMeConfig | None = None, positions: Mapping[int, torch.Tensor] | None = None
    ):
        self.backbone = backbone
        self.config = config or TempMeConfig()
        self.depth = len(backbone.visual.transformer.resblocks)
        plan_layers(self.config, 1, 1 + backbone.num_patches, self.depth)  # validates the config
        positions = dict(positions or {})
        if positions and set(positions) != set(self.config.clip_layers):
            raise ValueError(
                f"video positions for blocks {sorted(positions)}, the config merges clips at {list(self.config.clip_layers)}"
            )
        if any(p.shape[-1] != backbone.width for p in positions.values()):
            raise ValueError(f"video positional embeddings do not match width {backbone.width}")
        self.positions = {l: p.to(backbone.device, backbone.dtype) for l, p in positions.items()}

    def plan(self, frames: int) -> tuple[LayerPlan, ...]:
        """Token schedule for segments of ``frames`` frames."""
        return plan_layers(self.config, frames, 1 + self.backbone.num_patches, self.depth)

    @torch.inference_mode()
    def encode_tokens(self, pixels: torch.Tensor, with_tokens: bool = False) -> TempMeTokens:
        """Run the ViT with TempMe over pixels ``[B, T, 3, S, S]``."""
        b, t = pixels.shape[:2]
        plans = self.plan(t)
        trained_frames = self.positions[self.config.clip_layers[0]].shape[0] if self.positions else t
        x = self.backbone.embed_patches(pixels.flatten(0, 1))  # [B*T, 1+N, W]
        size: torch.Tensor | None = None
        source = None
        if with_tokens:
            n0 = x.shape[1]
            source = torch.eye(n0, dtype=x.dtype, device=x.device).expand(x.shape[0], n0, n0)
        cls, counts = 1, []
        last_source = last_size = cls_attention = None
        blocks = self.backbone.visual.transformer.resblocks
        for layer, (block, plan) in enumerate(zip(blocks, plans)):
            last = layer == self.depth - 1
            joined = x.shape[1] * plan.clip_size
            if plan.clip_size > 1:
                k = plan.clip_size
                metric = join_clips(x, k, cls)  # block input before the positions: x.detach()
                if plan.cross_r > 0 and layer in self.positions:
                    # Official ToMeBlock adds the positions inside `if r > 0`, after taking the metric.
                    clips = x.shape[0] // b
                    pos = _clip_positions(self.positions[layer], clips, t, trained_frames)
                    x = (x.view(b, clips, -1, x.shape[-1]) + pos[None, :, None]).flatten(0, 1)
                x = join_clips(x, k, cls)
                size = None if size is None else join_clips(size, k, cls)
                source = None if source is None else join_sources(source, k, cls)
                cls *= k
                if plan.cross_r > 0:
                    merge, _ = bipartite_soft_matching(metric, plan.cross_r, protected=cls)
                    source = None if source is None else merge_source(merge, x, source)
                    x, size = merge_wavg(merge, x, size)
            attended = x.shape[1]
            out = run_attention(
                block, x, size=size if self.config.prop_attn else None, return_attention=last and with_tokens
            )
            x = out.x
            if out.attention is not None:
                cls_attention = out.attention[:, :, :cls].mean(dim=1)
                last_source = source
                last_size = size if size is not None else _unit_sizes(x)
            if plan.intra_r > 0:
                merge, _ = bipartite_soft_matching(out.metric, plan.intra_r, protected=cls)
                source = None if source is None else merge_source(merge, x, source)
                x, size = merge_wavg(merge, x, size)
            x = run_mlp(block, x)
            counts.append((joined, attended, x.shape[1]))
        if size is None:
            size = _unit_sizes(x)
        return TempMeTokens(x, size, tuple(counts), source, last_source, last_size, cls_attention)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, with_tokens: bool = False) -> SegmentEncoding:
        """Pixels ``[B, T, 3, S, S]`` (any ``T >= 1``, shared by the batch) -> :class:`SegmentEncoding`.

        With ``with_tokens``:
        ``patch_tokens[b, t, n]`` is the last-block output of the merged token that holds
        patch ``n`` of frame ``t`` (found through source tracking);
        ``cls_attention[b, t, n]`` is the last-block attention (mean over heads) of frame
        ``t``'s CLS query on the token holding that patch, divided by the token's size --
        with proportional attention a token of size ``s`` draws about the attention of its
        ``s`` members, so this spreads it evenly over them. Like ``FullClipEncoder``, a row
        covers the frame's own patches only (attention to CLS tokens and to other frames'
        patches is left out), so it sums to at most 1.
        """
        b, t = pixels.shape[:2]
        out = self.encode_tokens(pixels, with_tokens=with_tokens)
        width, n = out.hidden.shape[-1], self.backbone.num_patches
        span = t // (out.hidden.shape[0] // b)  # frames per clip
        cls_hidden = out.hidden[:, :span].reshape(b, t, width)
        frames = F.normalize(self.backbone.project(cls_hidden).float(), dim=-1)
        patch_tokens = cls_attention = None
        if with_tokens:
            owner = _patch_owners(out.source, span)  # [B*U, span, N]
            patch_tokens = out.hidden.gather(1, owner.flatten(1)[..., None].expand(-1, -1, width))
            patch_tokens = patch_tokens.view(b, t, n, width)
            per_member = out.cls_attention / out.last_size[:, None, :, 0]  # [B*U, span, L_att]
            cls_attention = per_member.gather(2, _patch_owners(out.last_source, span)).reshape(b, t, n)
        return SegmentEncoding(
            embeddings=pool_frames(frames),
            frame_embeddings=frames,
            patch_tokens=patch_tokens,
            cls_attention=cls_attention,
            tokens_per_segment=out.hidden.shape[0] // b * out.hidden.shape[1],
        )


def _unit_sizes(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, 1]`` float32 ones: the sizes of tokens that hold one original token each."""
    return torch.ones(*x.shape[:2], 1, dtype=torch.float32, device=x.device)


def _patch_owners(source: torch.Tensor, span: int) -> torch.Tensor:
    """``[B * U, L, span * (1 + N)]`` source -> ``[B * U, span, N]`` index of the token holding
    each patch of each frame of the clip."""
    owner = source_owner(source)
    return owner.view(owner.shape[0], span, -1)[:, :, 1:]
