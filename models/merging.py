"""Token merging by bipartite soft matching (ToMe), with TempMe's protected tokens.

Follows ``tome/merge.py`` of facebookresearch/ToMe (``bipartite_soft_matching``,
``merge_wavg``, ``merge_source``) in the variant of TempMe (LunarShen/TempMe,
``tvr/models/module_tome_merge.py``): instead of one class token, the first ``protected``
tokens of every sequence (the CLS tokens of all frames of a clip) are held out of the
matching and put back first, untouched.

How the remaining tokens are split into the sets A (merged away) and B (merged into):
TempMe takes ``a, b = patches[::2], patches[1::2]`` when the number of protected tokens is
even and ``a, b = patches[1::2], patches[::2]`` when it is odd. In indices of the *whole*
sequence (protected tokens included) that is one rule: A holds the unprotected tokens at
even positions, B those at odd positions. With one protected token this is exactly ToMe
with ``class_token=True`` (ToMe's A = ``x[::2]`` whose first element, the CLS token, can
never be chosen), so ToMe and TempMe agree wherever both apply.

A merge's output is ``[protected, unmerged A tokens (original order), all B tokens]`` --
ToMe's and TempMe's order, which the next merge's A/B split depends on.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

MergeMode = Literal["mean", "sum", "amax"]
MergeFn = Callable[..., torch.Tensor]
"""``fn(x [B, L, C], mode="mean") -> [B, L', C]`` returned by :func:`bipartite_soft_matching`."""


def _identity(x: torch.Tensor, mode: MergeMode = "mean") -> torch.Tensor:
    return x


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 0) -> tuple[MergeFn, MergeFn]:
    """Plan the merge of ``r`` tokens of each sequence by bipartite soft matching.

    The metric is L2-normalised; the unprotected tokens are split alternately into A and B
    (see the module docstring for the parity rule); every A token finds its most similar B
    token (cosine); the ``r`` A tokens with the highest such similarity are merged into
    their B match. Several A tokens may merge into one B token; a B token never merges
    further in the same step, so there are no chains.

    Args:
        metric: ``[B, L, C]`` similarity features (ToMe: keys averaged over heads).
        r: tokens to remove; capped at ``(L - protected) // 2``.
        protected: the first ``protected`` tokens are never merged and come out first.
    Returns:
        ``(merge, unmerge)``. ``merge(x [B, L, C'], mode)`` -> ``[B, L - r, C']`` combines
        each group with ``mode`` ("mean", "sum" or "amax", via ``scatter_reduce``, the B
        token included). ``unmerge(y [B, L - r, C'])`` -> ``[B, L, C']`` gives every
        original token the value of the token it was merged into. Both are the identity
        when nothing is merged.
    """
    length = metric.shape[1]
    r = min(r, (length - protected) // 2)
    if r <= 0:
        return _identity, _identity

    a_start = protected % 2  # first unprotected token at an even position of the whole sequence
    b_start = 1 - a_start

    with torch.no_grad():
        # ToMe divides by the norm; F.normalize differs only in not dividing zero vectors by zero.
        # In float32 whatever the model's dtype: bf16 would round the cosines and so the matching.
        m = F.normalize(metric[:, protected:].float(), dim=-1)
        scores = m[:, a_start::2] @ m[:, b_start::2].transpose(-1, -2)  # [B, |A|, |B|]
        node_max, node_idx = scores.max(dim=-1)
        # A stable sort only fixes the order of exact ties, which ToMe leaves to the backend.
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]  # [B, |A|, 1]
        unm_idx = edge_idx[:, r:].sort(dim=1).values  # unmerged A tokens keep their order
        src_idx = edge_idx[:, :r]
        dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)

    def merge(x: torch.Tensor, mode: MergeMode = "mean") -> torch.Tensor:
        head, rest = x[:, :protected], x[:, protected:]
        src, dst = rest[:, a_start::2], rest[:, b_start::2]
        c = x.shape[-1]
        unm = src.gather(dim=1, index=unm_idx.expand(-1, -1, c))
        src = src.gather(dim=1, index=src_idx.expand(-1, -1, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(-1, -1, c), src, reduce=mode)
        return torch.cat([head, unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_unm = unm_idx.shape[1]
        head, unm, dst = x[:, :protected], x[:, protected : protected + n_unm], x[:, protected + n_unm :]
        c = x.shape[-1]
        src = dst.gather(dim=1, index=dst_idx.expand(-1, -1, c))
        rest = x.new_zeros(x.shape[0], length - protected, c)
        rest[:, b_start::2] = dst
        rest.scatter_(1, (a_start + 2 * unm_idx).expand(-1, -1, c), unm)
        rest.scatter_(1, (a_start + 2 * src_idx).expand(-1, -1, c), src)
        return torch.cat([head, rest], dim=1)

    return merge, unmerge


def merge_wavg(merge: MergeFn, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` ``[B, L, C]`` by size-weighted average; ``size`` ``[B, L, 1]`` (None: all ones)
    counts the original tokens each token holds. Returns ``(x [B, L', C], size [B, L', 1])``.

    Sizes are float32 (counts, exact) and the weighted sums and the division are formed in
    float32 whatever ``x``'s dtype, which ``x`` gets back at the end. ``x * size`` and ``size``
    travel through one ``merge`` (one gather and one scatter) as ``C + 1`` channels: each channel
    is reduced on its own, so this is ToMe's two merges in one call.
    """
    if size is None:
        size = torch.ones(*x.shape[:2], 1, dtype=torch.float32, device=x.device)
    weighted = torch.empty(*x.shape[:2], x.shape[2] + 1, dtype=torch.float32, device=x.device)
    torch.mul(x, size, out=weighted[..., :-1])
    weighted[..., -1:] = size
    merged = merge(weighted, mode="sum")
    size = merged[..., -1:]
    return (merged[..., :-1] / size).to(x.dtype), size


def merge_source(merge: MergeFn, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
    """Track which original tokens each token holds.

    Args:
        merge: a merge function for sequences shaped like ``x``.
        x: ``[B, L, C]``, only used for its shape when ``source`` is None.
        source: ``[B, L, L0]`` 0/1 matrix, row ``i`` marking the originals in token ``i``;
            None means no merge happened yet (identity, ``L0 = L``).
    Returns:
        ``[B, L', L0]``; every column holds exactly one 1.
    """
    if source is None:
        b, length = x.shape[:2]
        source = torch.eye(length, device=x.device, dtype=x.dtype).expand(b, length, length)
    return merge(source, mode="amax")


def source_owner(source: torch.Tensor) -> torch.Tensor:
    """``[B, L, L0]`` source matrix -> ``[B, L0]`` index of the token holding each original token."""
    return source.argmax(dim=1)
