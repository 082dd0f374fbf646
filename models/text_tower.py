"""Exact short text sequences: run a causal CLIP text tower only as far as it has to.

CLIP's text tower is causal and pools the EOT token (``text_pool_type == "argmax"``: the EOT
token has the highest id), so its output for a text depends only on the tokens up to its EOT;
the padding after it changes nothing. :func:`encode_text_tokens` therefore runs the tower over
the first ``n`` positions only, ``n`` the batch's last EOT position plus one -- token and
positional embeddings and the causal mask sliced to ``n`` -- which equals the full 77-token
forward up to float rounding. A search query of a few words costs a tenth of the full context.

Which towers qualify is read off the model, not its name: an open_clip tower (``CLIP`` itself,
or the ``TextTransformer`` of a ``CustomTextCLIP``) with argmax pooling, a causal attention mask,
no class token and no padding mask. Every other tower (SigLIP-style non-causal towers, towers
pooling the first/last token, Hugging Face text towers) runs open_clip's own full forward.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_eot_tower(model: nn.Module) -> nn.Module | None:
    """The module holding ``model``'s text tower when it is causal with EOT (argmax) pooling, else None."""
    tower = getattr(model, "text", model)  # CustomTextCLIP keeps its tower in .text; CLIP is its own
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    mask = getattr(tower, "attn_mask", None)
    if pool != "argmax" or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return None
    if not all(hasattr(tower, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
        return None
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    causal = bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())
    return tower if causal else None


def encode_text_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token ids ``[Q, C]`` -> ``[Q, E]`` text features (not normalised), as ``model.encode_text``.

    A causal EOT-pooled tower (:func:`causal_eot_tower`) runs over the first ``n = max EOT + 1``
    positions only; any other tower runs ``model.encode_text`` over all ``C``.
    """
    tower = causal_eot_tower(model)
    if tower is None:
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)  # argmax pooling: the EOT token has the highest id
    n = int(eot.max()) + 1
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens[:, :n]).to(cast_dtype)
    x = x + tower.positional_embedding[:n].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:n, :n])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
