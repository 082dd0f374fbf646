"""LLaVA-OneVision as a yes/no reranker over HoliTom-compressed video tokens.

A video LLM of the LLaVA-OneVision family (Hugging Face ``LlavaOnevisionForConditionalGeneration``:
SigLIP vision tower -> 2-layer projector -> Qwen2) scores each candidate as P("yes") to
"Does this video show: {query}? Answer yes or no." Its visual tokens are never recomputed at query
time: ingestion stores a summary in the LLM's own visual space (:meth:`LlavaReranker.summarize`), and
prefill runs HoliTom's inner-LLM merge (:func:`prefill`). Follows the official HoliTom code
(github.com/cokeshao/HoliTom):

* Outer-LLM step, ``holitom/llava_arch.py`` (``prepare_inputs_labels_for_multimodal``): the vision tower's
  feature layer -> ``mm_projector`` -> 2x2 bilinear pooling (``get_2dPool``; HF ``apply_pooling``) of both
  the features and the tower's attention (the feature layer's softmax attention averaged over heads and
  queries, ``siglip_encoder.py`` with ``WRAPPER=holitom``), then :func:`models.holitom.holitom`. With
  LLaVA-OV's ``mm_newline_position="one_token"`` one ``image_newline`` follows the video tokens.
* Inner-LLM step, ``holitom/modeling_qwen2.py`` (``Qwen2Model_holitom.forward``): at decoder layer ``k``
  (``HOLITOM_k``) the last token's attention at layer ``k - 1``, averaged over heads, ranks the visual
  span; ``round(L * (1 - r))`` tokens stay and the rest are folded into their most similar kept token
  (:func:`models.holitom.inner_llm_merge`); the kept tokens keep their original rotary positions
  (``position_ids = keep_indexs``) for the remaining layers.

Deviations, all deliberate:

* Layer ``k - 1``'s attention is not materialised for the whole sequence (the reference switches that
  layer to eager attention with ``output_attentions``); only the last query's row is computed, from the
  same normalised hidden states and rotary keys (:func:`last_token_attention`). Same numbers, ``L`` times
  less attention work.
* Candidates are batched with left padding (the reference runs batch size 1); the merge is done per
  candidate and the batch re-padded, so scores do not depend on the batch a candidate lands in.
* P("yes") is normalised over the answer words only (``Yes``/``yes`` vs ``No``/``no``), not the vocabulary,
  so formatting tokens do not dilute it; ordering is the same whenever the model answers yes or no.
* Frames reach the vision tower resized straight to its square input (as LLaVA-OV's video processor
  does), but from the frames ingestion decoded for CLIP (short side 224), so they are upsampled.
* ``default`` HOLITOM_k is 18, the value of the repository's README/evaluation scripts (the code's
  environment default is 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.holitom import inner_llm_merge
from models.registry import SUMMARIZERS
from models.summary import VideoSummary, summarize

QUESTION = "Does this video show: {query}? Answer yes or no."
SYSTEM_PROMPT = "You are a helpful assistant."
# LLaVA-NeXT's ``qwen_1_5`` conversation template, which LLaVA-OV and HoliTom's evaluation use.
PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{video}\n{question}<|im_end|>\n<|im_start|>assistant\n"
)
YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")
SIGLIP_MEAN = (0.5, 0.5, 0.5)  # LLaVA-OV's image processor (SigLIP) normalisation
SIGLIP_STD = (0.5, 0.5, 0.5)


class LlmUnavailableError(RuntimeError):
    """The video LLM cannot be loaded (no weights offline, unknown id, bad directory, wrong architecture)."""


@dataclass(frozen=True)
class InnerMergeParams:
    """HoliTom's inner-LLM merge: at decoder layer ``layer`` fold a fraction ``ratio`` of the visual span.

    Attributes:
        layer: ``HOLITOM_k``; ``1 <= layer < num_hidden_layers``.
        ratio: ``HOLITOM_r``, the fraction of the visual span merged away.
    """

    layer: int = 18
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"the inner merge needs layer >= 1 (it reads layer k - 1's attention), got {self.layer}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")


@dataclass(frozen=True)
class VisualFeatures:
    """A video's visual tokens in the LLM's input space, before any compression.

    Attributes:
        tokens: ``[T, N, D]`` projector outputs after 2x2 pooling (``N = ceil(g / 2) ** 2`` for a ``g x g`` grid).
        attention: ``[T, N]`` the feature layer's attention each token receives, pooled the same way.
    """

    tokens: torch.Tensor
    attention: torch.Tensor


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded input sequences ``[prefix, visual_i, suffix]`` of ``B`` candidates.

    Attributes:
        embeds: ``[B, L, D]`` input embeddings (zeros at padding).
        positions: ``[B, L]`` long rotary positions (``0..`` per sequence, 0 at padding).
        valid: ``[B, L]`` bool, False at padding.
        visual_start: ``[B]`` long index of each visual span in the padded sequence.
        visual_len: ``[B]`` long length of each visual span.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    visual_start: torch.Tensor
    visual_len: torch.Tensor


@dataclass(frozen=True)
class PrefillOutput:
    """Prefill of a batch, and what it did.

    Attributes:
        last_hidden: ``[B, D]`` the last token's final hidden state (after the final norm).
        layer_lengths: padded sequence length each decoder layer processed.
        tokens_fed: ``[B]`` real (unpadded) input tokens of each sequence.
        visual_tokens: ``[B]`` visual tokens of each sequence entering the first layer.
        visual_tokens_merged: ``[B]`` visual tokens left after the inner merge (= ``visual_tokens`` without).
        positions: per sequence, the rotary positions of the tokens the last layer saw, ``[L_i]`` long.
    """

    last_hidden: torch.Tensor
    layer_lengths: list[int]
    tokens_fed: torch.Tensor
    visual_tokens: torch.Tensor
    visual_tokens_merged: torch.Tensor
    positions: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreOutput:
    """P("yes") of each candidate and the prefill that produced it."""

    p_yes: torch.Tensor
    prefill: PrefillOutput


# ----- vision side (ingestion) -----------------------------------------------------------------


def pixels_for_tower(images: np.ndarray | torch.Tensor, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB frames ``[T, H, W, 3]`` -> ``[T, 3, size, size]`` resized (bicubic, antialiased) straight to
    the tower's square input and normalised with SigLIP's mean/std, as LLaVA-OV's video processor does."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    mean = torch.tensor(SIGLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SIGLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device=device, dtype=dtype)


def received_attention(attention_module: nn.Module, layer_norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a SigLIP encoder layer over its input ``hidden`` ``[B, N, C]``, averaged over
    heads and queries: how much attention each token receives, ``[B, N]`` (HoliTom's
    ``attn_weights.mean(dim=1).mean(dim=1)``)."""
    x = layer_norm(hidden)
    b, n, _ = x.shape
    heads, dim = attention_module.num_heads, attention_module.head_dim
    q = attention_module.q_proj(x).view(b, n, heads, dim).transpose(1, 2)
    k = attention_module.k_proj(x).view(b, n, heads, dim).transpose(1, 2)
    weights = ((q @ k.transpose(-2, -1)) * attention_module.scale).softmax(dim=-1, dtype=torch.float32)
    return weights.mean(dim=(1, 2))


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """Index into ``(embeddings, layer 1 out, ..., layer L out)`` that ``vision_feature_layer`` (an int,
    negative from the end as in HF) designates; at least 1 (a layer must have run)."""
    index = vision_feature_layer if vision_feature_layer >= 0 else num_layers + 1 + vision_feature_layer
    if not 1 <= index <= num_layers:
        raise ValueError(f"vision_feature_layer {vision_feature_layer} does not name a layer output of {num_layers}")
    return index


# ----- prompt assembly -------------------------------------------------------------------------


def assemble(prefix: torch.Tensor, visuals: Sequence[torch.Tensor], suffix: torch.Tensor) -> PromptBatch:
    """Left-pad ``[prefix ; visual_i ; suffix]`` for each candidate.

    Args:
        prefix: ``[P, D]`` embeddings of the prompt before the video.
        visuals: ``B`` tensors ``[M_i, D]``, each candidate's visual tokens (newline included).
        suffix: ``[S, D]`` embeddings of the prompt after the video.
    """
    lengths = [prefix.shape[0] + v.shape[0] + suffix.shape[0] for v in visuals]
    width, dim = max(lengths), prefix.shape[1]
    b = len(visuals)
    embeds = prefix.new_zeros(b, width, dim)
    positions = torch.zeros(b, width, dtype=torch.long, device=prefix.device)
    valid = torch.zeros(b, width, dtype=torch.bool, device=prefix.device)
    for i, (visual, length) in enumerate(zip(visuals, lengths)):
        pad = width - length
        embeds[i, pad:] = torch.cat([prefix, visual.to(prefix.dtype), suffix])
        positions[i, pad:] = torch.arange(length, device=prefix.device)
        valid[i, pad:] = True
    visual_start = torch.tensor([width - n + prefix.shape[0] for n in lengths], device=prefix.device)
    visual_len = torch.tensor([v.shape[0] for v in visuals], device=prefix.device)
    return PromptBatch(embeds, positions, valid, visual_start, visual_len)


def additive_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask over left-padded sequences, ``[B, L]`` valid -> ``[B, 1, L, L]`` additive (0 or the
    dtype's minimum). Padding keys are masked; a padding query sees itself only, so no row is empty."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    allowed = causal[None] & valid[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


# ----- language side ---------------------------------------------------------------------------


def last_token_attention(
    layer: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Attention of the last query of a Qwen2 decoder layer over all keys, averaged over heads, ``[B, L]``
    (what HoliTom reads from ``layer_outputs[1]`` of layer ``k - 1``): ``input_layernorm``, the layer's
    q/k projections, rotary embedding, grouped keys repeated per head, scaled softmax with ``mask``."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, length, _ = x.shape
    q = attn.q_proj(x[:, -1:]).view(b, 1, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    logits = (q @ repeat_kv(k, attn.num_key_value_groups).transpose(-2, -1)) * attn.scaling + mask[:, :, -1:]
    return logits.softmax(dim=-1, dtype=torch.float32).mean(dim=1)[:, 0]


def merge_visual_spans(
    hidden: torch.Tensor, batch: PromptBatch, attention: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply :func:`models.holitom.inner_llm_merge` to each sequence's visual span and re-pad.

    Args:
        hidden: ``[B, L, D]`` hidden states entering layer ``k``.
        batch: the batch's padding, positions and visual spans.
        attention: ``[B, L]`` last-token attention at layer ``k - 1``.
        ratio: fraction of each span folded away.
    Returns:
        ``(hidden [B, L', D], positions [B, L'], valid [B, L'], kept [B])``: left-padded sequences
        ``[prefix ; merged span ; suffix]`` whose positions are the original ones of the tokens kept.
    """
    rows, row_positions, kept_counts = [], [], []
    for i in range(hidden.shape[0]):
        start, length = int(batch.visual_start[i]), int(batch.visual_len[i])
        span = slice(start, start + length)
        merged = inner_llm_merge(hidden[i : i + 1, span], attention[i : i + 1, span], ratio)
        first = int(batch.valid[i].nonzero()[0])
        rows.append(torch.cat([hidden[i, first:start], merged.hidden[0], hidden[i, start + length :]]))
        row_positions.append(
            torch.cat([batch.positions[i, first:start], batch.positions[i, start + merged.kept[0]], batch.positions[i, start + length :]])
        )
        kept_counts.append(merged.kept.shape[1])
    width = max(r.shape[0] for r in rows)
    out = hidden.new_zeros(len(rows), width, hidden.shape[2])
    positions = torch.zeros(len(rows), width, dtype=torch.long, device=hidden.device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=hidden.device)
    for i, (row, pos) in enumerate(zip(rows, row_positions)):
        out[i, width - row.shape[0] :] = row
        positions[i, width - row.shape[0] :] = pos
        valid[i, width - row.shape[0] :] = True
    return out, positions, valid, torch.tensor(kept_counts, device=hidden.device)


def prefill(language_model: nn.Module, batch: PromptBatch, inner: InnerMergeParams | None) -> PrefillOutput:
    """Run a Qwen2 decoder (``Qwen2Model``) over ``batch`` with HoliTom's inner merge at layer ``inner.layer``.

    Layers ``< k`` see the whole sequence; before layer ``k`` each visual span is merged
    (:func:`merge_visual_spans`) using layer ``k - 1``'s last-token attention, and the rotary embeddings
    are recomputed from the kept tokens' original positions, as ``Qwen2Model_holitom.forward`` does.
    ``inner=None`` runs the plain decoder.
    """
    layers = language_model.layers
    if inner is not None and inner.layer >= len(layers):
        raise ValueError(f"inner merge layer {inner.layer} needs more than {len(layers)} decoder layers")
    hidden, positions, valid = batch.embeds, batch.positions, batch.valid
    mask = additive_mask(valid, hidden.dtype)
    rotary = language_model.rotary_emb(hidden, positions)
    lengths, kept = [], batch.visual_len
    layer_input = hidden
    for index, layer in enumerate(layers):
        if inner is not None and index == inner.layer:
            attention = last_token_attention(layers[index - 1], layer_input, rotary, mask)
            hidden, positions, valid, kept = merge_visual_spans(hidden, batch, attention, inner.ratio)
            mask = additive_mask(valid, hidden.dtype)
            rotary = language_model.rotary_emb(hidden, positions)
        lengths.append(hidden.shape[1])
        layer_input = hidden
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
    last = language_model.norm(hidden[:, -1])
    return PrefillOutput(
        last_hidden=last,
        layer_lengths=lengths,
        tokens_fed=batch.valid.sum(dim=1),
        visual_tokens=batch.visual_len,
        visual_tokens_merged=kept,
        positions=[p[v] for p, v in zip(positions, valid)],
    )


def yes_probability(logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> torch.Tensor:
    """``[B, V]`` next-token logits -> ``[B]`` P(yes | the answer is yes or no): softmax over the answer
    words' logits, summed over the yes words."""
    answers = logits[:, list(yes_ids) + list(no_ids)].float().softmax(dim=-1)
    return answers[:, : len(yes_ids)].sum(dim=-1)


def plan_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split candidates (in order) into batches whose padded size ``len(batch) * max(lengths)`` stays
    within ``max_tokens``; a candidate longer than ``max_tokens`` runs alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


# ----- the model -------------------------------------------------------------------------------


def llm_space_summary(features: VisualFeatures, times: Sequence[float], method: str, **params: Any) -> VideoSummary:
    """Compress a video's LLM-space tokens for storage (the outer-LLM step): :func:`models.summary.summarize`
    over ``[T, N, D]`` with the tower attention. VQToken codes are stored as the means of their *raw*
    tokens (``code_vectors="raw"``), because without VQToken's trained VQ-Attention the LLM has to read
    them as ordinary visual tokens, at the projector's scale. Positions are indices on the pooled grid.
    """
    if method not in SUMMARIZERS:
        raise ValueError(f"unknown LLM summary method {method!r}; expected one of {SUMMARIZERS.names()}")
    return summarize(method, features.tokens.float(), features.attention.float(), list(times), code_vectors="raw", **params)


class LlavaReranker:
    """A loaded LLaVA-OneVision model plus its tokenizer, as a yes/no video scorer.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (eval mode is set here).
        tokenizer: its tokenizer; ``Yes``/``yes``/``No``/``no`` must each be one token (those that are not
            are left out, at least one of each is needed).
        name: model id or directory.
        inner: HoliTom's inner merge, or None for plain prefill.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, inner: InnerMergeParams | None = InnerMergeParams()):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.inner = inner
        text_config = model.config.text_config
        if inner is not None and inner.layer >= text_config.num_hidden_layers:
            raise ValueError(f"inner merge layer {inner.layer} >= the LLM's {text_config.num_hidden_layers} layers")
        self.yes_ids = self._single_token_ids(YES_WORDS)
        self.no_ids = self._single_token_ids(NO_WORDS)
        if not self.yes_ids or not self.no_ids:
            raise ValueError("the tokenizer has no single-token 'yes'/'no' answer words")
        prefix, suffix = PROMPT_TEMPLATE.split("{video}")
        self._prefix_template, self._suffix_template = prefix, suffix

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def tokens_per_frame(self) -> int:
        grid = self.image_size // int(self.model.config.vision_config.patch_size)
        return math.ceil(grid / 2) ** 2

    @classmethod
    def load(cls, source: str, device: str = "cpu", inner: InnerMergeParams | None = InnerMergeParams()) -> LlavaReranker:
        """Load model and tokenizer from a Hugging Face model id or a local directory (``from_pretrained``),
        in bfloat16 on CUDA and float32 on CPU.

        Raises:
            LlmUnavailableError: anything that prevents loading (offline, missing files, wrong model).
        """
        try:
            from transformers import (
                AutoTokenizer,
                LlavaOnevisionForConditionalGeneration,
            )

            dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(source, dtype=dtype).to(dev)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:  # transformers raises OSError/ValueError/HF hub errors alike
            hint = " (weights cannot be downloaded here: point it at a local directory)" if not Path(source).exists() else ""
            raise LlmUnavailableError(f"cannot load the video LLM {source!r}: {exc}{hint}") from exc
        return cls(model, tokenizer, source, inner)

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        ids = [self.tokenizer.encode(w, add_special_tokens=False) for w in words]
        return [i[0] for i in ids if len(i) == 1]

    # ----- ingestion: the outer-LLM step -----------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, images: np.ndarray | torch.Tensor, chunk: int = 4) -> VisualFeatures:
        """uint8 RGB frames ``[T, H, W, 3]`` -> pooled LLM-space tokens and tower attention (``[T, N, D]``,
        ``[T, N]``), the same tokens HF's ``get_video_features`` computes before appending the newline.
        Frames go through the tower ``chunk`` at a time (a SigLIP-400M attention map is 34 MB a frame)."""
        parts = [self._encode_chunk(images[i : i + chunk]) for i in range(0, len(images), chunk)]
        return VisualFeatures(tokens=torch.cat([p.tokens for p in parts]), attention=torch.cat([p.attention for p in parts]))

    def _encode_chunk(self, images: np.ndarray | torch.Tensor) -> VisualFeatures:
        inner_model = self.model.model
        tower = inner_model.vision_tower
        config = self.model.config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError("only a single vision_feature_layer is supported")
        index = feature_layer_index(config.vision_feature_layer, len(tower.encoder.layers))
        hidden = tower.embeddings(pixels_for_tower(images, self.image_size, self.device, self.dtype))
        for layer in tower.encoder.layers[: index - 1]:
            hidden = layer(hidden, None)
        last = tower.encoder.layers[index - 1]
        attention = received_attention(last.self_attn, last.layer_norm1, hidden)
        hidden = last(hidden, None)
        if config.vision_feature_select_strategy == "default":
            hidden, attention = hidden[:, 1:], attention[:, 1:]
        tokens = inner_model.apply_pooling(inner_model.multi_modal_projector(hidden))
        pooled_attention = inner_model.apply_pooling(attention[..., None].to(hidden.dtype))[..., 0]
        return VisualFeatures(tokens=tokens, attention=pooled_attention)

    def summarize(self, images: np.ndarray | torch.Tensor, times: Sequence[float], method: str = "holitom", **params: Any) -> VideoSummary:
        """Frames -> the stored LLM-space summary (:func:`llm_space_summary`)."""
        return llm_space_summary(self.encode_frames(images), times, method, **params)

    # ----- query time ------------------------------------------------------------------------------
    def visual_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Visual tokens ``[M, D]`` (a stored summary's, or all ``T * N`` uncompressed ones) -> the span fed to
        the LLM, ``[M + 1, D]``: the tokens then LLaVA-OV's single ``image_newline``."""
        newline = self.model.model.image_newline
        return torch.cat([tokens.to(device=self.device, dtype=self.dtype), newline[None].to(self.dtype)])

    def prompt_embeddings(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``([P, D], [S, D])`` of the prompt around the video for ``query``."""
        question = QUESTION.format(query=query)
        embed = self.model.get_input_embeddings()
        parts = []
        for text in (self._prefix_template.format(system=SYSTEM_PROMPT), self._suffix_template.format(question=question)):
            ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), device=self.device, dtype=torch.long)
            parts.append(embed(ids))
        return parts[0], parts[1]

    @torch.inference_mode()
    def score(self, query: str, visuals: Sequence[torch.Tensor], merge: bool = True) -> ScoreOutput:
        """P("yes") for each candidate's visual span (:meth:`visual_inputs`), as one left-padded batch.

        Args:
            query: the search text.
            visuals: ``B`` spans ``[M_i + 1, D]``.
            merge: apply the reranker's inner merge (``self.inner``); False runs plain prefill.
        """
        prefix, suffix = self.prompt_embeddings(query)
        batch = assemble(prefix, visuals, suffix)
        out = prefill(self.model.model.language_model, batch, self.inner if merge else None)
        logits = self.model.lm_head(out.last_hidden)
        return ScoreOutput(p_yes=yes_probability(logits, self.yes_ids, self.no_ids), prefill=out)
