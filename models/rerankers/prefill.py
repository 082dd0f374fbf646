"""Prompt and prefill of the video LLM reranker, as pure functions over tensors and a Qwen2 decoder.

The prompt (:func:`prompt_texts`) is LLaVA-NeXT's ``qwen_1_5`` conversation around the video: "Does this
video show: {query}? Answer yes or no."; candidates' visual spans are left-padded into one batch
(:func:`assemble`) and run through the decoder with HoliTom's inner-LLM merge (:func:`prefill`), following
the official HoliTom code (github.com/cokeshao/HoliTom), ``holitom/modeling_qwen2.py``
(``Qwen2Model_holitom.forward``): at decoder layer ``k`` (``HOLITOM_k``) the last token's attention at
layer ``k - 1``, averaged over heads, ranks the visual span; ``round(L * (1 - r))`` tokens stay and the rest
are folded into their most similar kept token (:func:`models.holitom.inner_llm_merge`); the kept tokens
keep their original rotary positions (``position_ids = keep_indexs``) for the remaining layers. P("yes")
comes from the last token's logits (:func:`yes_probability`).

Deviations, all deliberate:

* Layer ``k - 1``'s attention is not materialised for the whole sequence (the reference switches that
  layer to eager attention with ``output_attentions``); only the last query's row is computed, from the
  same normalised hidden states and rotary keys (:func:`last_token_attention`). Same numbers, ``L`` times
  less attention work.
* Candidates are batched with left padding (the reference runs batch size 1); the merge is done per
  candidate and the batch re-padded, so scores do not depend on the batch a candidate lands in.
* P("yes") is normalised over the answer words only (``Yes``/``yes`` vs ``No``/``no``), not the vocabulary,
  so formatting tokens do not dilute it; ordering is the same whenever the model answers yes or no.
* ``default`` HOLITOM_k is 18, the value of the repository's README/evaluation scripts (the code's
  environment default is 3).

The model that supplies the decoder, embeddings and LM head is loaded in :mod:`models.rerankers.llava`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from models.holitom import inner_llm_merge

QUESTION = "Does this video show: {query}? Answer yes or no."
SYSTEM_PROMPT = "You are a helpful assistant."
# LLaVA-NeXT's ``qwen_1_5`` conversation template, which LLaVA-OV and HoliTom's evaluation use.
PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{video}\n{question}<|im_end|>\n<|im_start|>assistant\n"
)
YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")


def prompt_texts(query: str) -> tuple[str, str]:
    """The prompt's text before and after the video for ``query`` (each tokenized on its own)."""
    prefix, suffix = PROMPT_TEMPLATE.split("{video}")
    return prefix.format(system=SYSTEM_PROMPT), suffix.format(question=QUESTION.format(query=query))


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
