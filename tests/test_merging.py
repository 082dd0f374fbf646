"""Bipartite soft matching with protected tokens (models/merging.py)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.merging import (
    bipartite_soft_matching,
    merge_source,
    merge_wavg,
    source_owner,
)


def _unit(*values: float) -> list[float]:
    v = torch.tensor(values, dtype=torch.float32)
    return (v / v.norm()).tolist()


def test_known_pairs_merge_with_one_protected_token():
    # Whole-sequence positions 0..6; position 0 protected. A = even positions {2, 4, 6},
    # B = odd positions {1, 3, 5} (ToMe with class_token=True).
    metric = torch.tensor(
        [
            [
                [1.0, 1.0, 1.0],  # 0: protected, identical to everything -- must not matter
                _unit(1, 0, 0),  # 1 B
                _unit(1, 0.05, 0),  # 2 A -> merges into 1
                _unit(0, 1, 0),  # 3 B
                _unit(0.6, -0.8, 0.1),  # 4 A, far from every B -> stays
                _unit(0, 0, 1),  # 5 B
                _unit(0, 0.05, 1),  # 6 A -> merges into 5
            ]
        ]
    )
    x = torch.arange(7, dtype=torch.float32).view(1, 7, 1) * 10
    merge, _ = bipartite_soft_matching(metric, r=2, protected=1)
    out = merge(x, mode="mean")
    # [protected, unmerged A (4), B tokens (1+2, 3, 5+6)]
    assert out[0, :, 0].tolist() == [0.0, 40.0, 15.0, 30.0, 55.0]


def test_parity_follows_whole_sequence_with_two_protected_tokens():
    # Positions 0, 1 protected; A = {2, 4}, B = {3, 5}. Token 4 is closest to 3; token 2 is
    # closer to 5 than to 3 but less similar than the pair (4, 3), so r=1 merges 4 into 3.
    metric = torch.tensor(
        [[_unit(1, 0), _unit(1, 0), _unit(0.2, 1), _unit(1, 0), _unit(1, 0.01), _unit(0, 1)]]
    )
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]]])
    merge, _ = bipartite_soft_matching(metric, r=1, protected=2)
    assert merge(x, mode="sum")[0, :, 0].tolist() == [0.0, 1.0, 2.0, 7.0, 5.0]


def test_r_zero_is_identity_and_r_is_capped():
    metric = torch.randn(2, 9, 4)
    x = torch.randn(2, 9, 3)
    merge, unmerge = bipartite_soft_matching(metric, r=0, protected=1)
    assert merge(x) is x and unmerge(x) is x
    merge, _ = bipartite_soft_matching(metric, r=100, protected=3)
    assert merge(x).shape == (2, 9 - (9 - 3) // 2, 3)


def test_protected_tokens_untouched_and_first():
    torch.manual_seed(0)
    metric = torch.randn(3, 20, 8)
    metric[:, :4] = metric[:, 4:8]  # protected tokens identical to others: still never merged
    x = torch.randn(3, 20, 5)
    merge, _ = bipartite_soft_matching(metric, r=7, protected=4)
    merged, size = merge_wavg(merge, x)
    assert merged.shape == (3, 13, 5)
    torch.testing.assert_close(merged[:, :4], x[:, :4])
    assert torch.all(size[:, :4] == 1)


def test_unmerge_gives_each_original_its_group_value():
    torch.manual_seed(1)
    metric, x = torch.randn(2, 15, 6), torch.randn(2, 15, 4)
    merge, unmerge = bipartite_soft_matching(metric, r=5, protected=3)
    merged, _ = merge_wavg(merge, x)
    owner = source_owner(merge_source(merge, x))
    expected = merged.gather(1, owner[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(unmerge(merged), expected)


def test_repeated_merges_track_sizes_and_sources():
    torch.manual_seed(2)
    x = torch.randn(2, 30, 6)
    y, size, source = x, None, None
    for r in (4, 4, 5):
        merge, _ = bipartite_soft_matching(y, r, protected=2)
        source = merge_source(merge, y, source)
        y, size = merge_wavg(merge, y, size)
    assert y.shape == (2, 17, 6)
    torch.testing.assert_close(size[..., 0], source.sum(-1))
    torch.testing.assert_close(y, (source @ x) / size)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 40),
    protected=st.integers(0, 4),
    r=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_merge_properties(batch: int, length: int, protected: int, r: int, seed: int):
    protected = min(protected, length)
    gen = torch.Generator().manual_seed(seed)
    metric = torch.randn(batch, length, 5, generator=gen)
    x = torch.randn(batch, length, 3, generator=gen)
    merge, _ = bipartite_soft_matching(metric, r, protected)
    source = merge_source(merge, x)
    merged, size = merge_wavg(merge, x)

    removed = min(r, (length - protected) // 2)
    assert merged.shape == (batch, length - removed, 3)
    assert torch.isfinite(merged).all()
    assert torch.all(size.sum(dim=(1, 2)) == length)
    # Source rows partition the original tokens and agree with the sizes.
    assert set(source.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(source.sum(dim=1) == 1)
    torch.testing.assert_close(source.sum(dim=2), size[..., 0])
    torch.testing.assert_close(merged, (source @ x) / size)
    torch.testing.assert_close(merged[:, :protected], x[:, :protected])
    if removed == 0:
        torch.testing.assert_close(merged, x)
        return
    # Unmerged A tokens (A: unprotected tokens at even positions) follow, in their original order.
    n_unmerged = len(range(protected % 2, length - protected, 2)) - removed
    positions = torch.arange(length, dtype=torch.float32).view(1, length, 1).expand(batch, -1, -1)
    kept = merge(positions, mode="amax")[:, protected : protected + n_unmerged, 0]
    assert torch.all(kept.diff(dim=1) > 0) and torch.all(kept % 2 == 0)
