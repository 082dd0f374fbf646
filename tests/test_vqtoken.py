"""VQToken: K-means (k-means++, cosine assignment), elbow K, codebook / index map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.vqtoken import (
    VQTokenParams,
    canonical_codes,
    code_frame_spans,
    elbow,
    kmeans_plus_plus,
    spherical_kmeans,
    vqtoken,
)


def blob_video(num_blobs: int, frames: int = 12, positions: int = 49, dim: int = 64, seed: int = 0):
    """Tokens drawn around ``num_blobs`` random unit directions (tight, well separated), as a video grid."""
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(num_blobs, dim, generator=generator), dim=-1)
    labels = torch.arange(frames * positions) % num_blobs  # balanced blobs
    labels = labels[torch.randperm(frames * positions, generator=generator)]
    scale = 1 + 4 * torch.rand(frames * positions, 1, generator=generator)  # norms vary; only directions matter
    tokens = scale * (directions[labels] + 0.002 * torch.randn(frames * positions, dim, generator=generator))
    return tokens.view(frames, positions, dim), labels.view(frames, positions)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings of the same points define the same clusters (up to renaming)."""
    pairs = torch.unique(torch.stack([a.flatten(), b.flatten()]), dim=1)
    return pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


def test_kmeans_plus_plus_spreads_over_separated_blobs() -> None:
    tokens, labels = blob_video(6)
    x = F.normalize(tokens.reshape(-1, 64), dim=-1)
    init = kmeans_plus_plus(x, 6, torch.Generator().manual_seed(0))
    hit = (F.normalize(init, dim=-1) @ x.T).argmax(dim=1)
    assert sorted(labels.flatten()[hit].tolist()) == list(range(6))


def test_kmeans_recovers_separated_blobs() -> None:
    tokens, labels = blob_video(5, frames=4)
    unit = F.normalize(tokens.reshape(-1, 64), dim=-1)
    fit = spherical_kmeans(unit, 5)
    assert same_partition(fit.labels, labels.flatten())
    assert fit.iterations < 100  # converged before the cap
    assert fit.distortion == pytest.approx(float((unit - fit.centroids[fit.labels]).square().sum()))


def test_kmeans_is_seeded() -> None:
    x = F.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    a, b = spherical_kmeans(x, 7, seed=11), spherical_kmeans(x, 7, seed=11)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    with pytest.raises(ValueError):
        spherical_kmeans(x[:3], 4)


def test_elbow_on_constructed_distortions() -> None:
    # steep drop until K=4, flat after: second differences 0, 0, 29, 0, 0 at K = 2..6
    assert elbow([1, 2, 3, 4, 5, 6, 7], [100.0, 70.0, 40.0, 10.0, 9.0, 8.0, 7.0]) == 4
    assert elbow([12, 13, 14, 15], [50.0, 20.0, 19.0, 18.0]) == 13
    with pytest.raises(ValueError):
        elbow([12, 13], [2.0, 1.0])


@pytest.mark.parametrize("num_blobs", [14, 16, 20])
def test_adaptive_k_finds_the_number_of_blobs(num_blobs: int) -> None:
    tokens, labels = blob_video(num_blobs)
    out = vqtoken(tokens)
    assert out.candidates == tuple(range(12, 33))
    assert out.num_clusters == num_blobs
    assert out.codebook.shape == (num_blobs, 64)
    assert same_partition(out.index_map, labels)


def test_fixed_k_mode_and_output_contract() -> None:
    tokens, _ = blob_video(8, frames=6)
    out = vqtoken(tokens, VQTokenParams(num_codes=8))
    assert out.candidates == () and out.num_clusters == 8
    assert out.index_map.shape == (6, 49) and out.index_map.dtype == torch.long
    assert out.counts.sum() == 6 * 49 and (out.counts > 0).all()
    # codes numbered by first occurrence in (frame, position) order
    flat = out.index_map.flatten().tolist()
    first_seen = list(dict.fromkeys(flat))
    assert first_seen == list(range(out.codebook.shape[0]))
    # codebook = mean of the L2-normalised tokens of each code (paper: B_k = mean of its tokens)
    unit = F.normalize(tokens.reshape(-1, 64), dim=-1)
    for code in range(out.codebook.shape[0]):
        torch.testing.assert_close(out.codebook[code], unit[out.index_map.flatten() == code].mean(dim=0))


@pytest.mark.parametrize("params", [VQTokenParams(num_codes=32), VQTokenParams()])
def test_a_video_with_fewer_tokens_than_codes_keeps_one_code_per_token(params: VQTokenParams) -> None:
    tokens = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))  # 9 tokens < K
    out = vqtoken(tokens, params)
    assert out.num_clusters == 9 and out.candidates == ()
    assert out.index_map.flatten().tolist() == list(range(9))
    torch.testing.assert_close(out.codebook, F.normalize(tokens[0], dim=-1))
    # 13 tokens: adaptive K would try 12..13, too few points for the elbow, so K = k_min
    out = vqtoken(torch.randn(1, 13, 16, generator=torch.Generator().manual_seed(3)), VQTokenParams())
    assert out.num_clusters <= 12 and out.candidates == ()


def test_vqtoken_is_deterministic() -> None:
    tokens = torch.randn(12, 49, 32, generator=torch.Generator().manual_seed(5))
    a, b = vqtoken(tokens), vqtoken(tokens)
    assert a.num_clusters == b.num_clusters and 13 <= a.num_clusters <= 31
    assert torch.equal(a.index_map, b.index_map) and torch.equal(a.codebook, b.codebook)
    assert a.distortions == b.distortions


def test_index_map_localises_codes_in_time() -> None:
    # frames 0-3 show scene A, 4-7 scene B, 8-11 scene A again; 3 codes with fixed K
    generator = torch.Generator().manual_seed(0)
    scenes = F.normalize(torch.randn(2, 16, generator=generator), dim=-1)
    tokens = scenes[[0] * 4 + [1] * 4 + [0] * 4][:, None, :].expand(12, 9, 16).clone()
    tokens[:, 0] = F.normalize(torch.randn(16, generator=generator), dim=-1)  # a constant logo
    out = vqtoken(tokens, VQTokenParams(num_codes=3))
    start, end = code_frame_spans(out.index_map, out.codebook.shape[0])
    scene_a, scene_b, logo = int(out.index_map[0, 1]), int(out.index_map[4, 1]), int(out.index_map[0, 0])
    assert len({scene_a, scene_b, logo}) == 3
    assert (start[scene_a], end[scene_a]) == (0, 11)
    assert (start[scene_b], end[scene_b]) == (4, 7)
    assert (start[logo], end[logo]) == (0, 11)
    assert out.counts[scene_b] == 4 * 8


def test_canonical_codes_renumbers_and_drops_empty() -> None:
    codes, kept = canonical_codes(torch.tensor([2, 2, 0, 3, 0]), k=5)
    assert codes.tolist() == [0, 0, 1, 2, 1]
    assert kept.tolist() == [2, 0, 3]


def test_code_frame_spans_worked_example() -> None:
    index_map = torch.tensor([[0, 1], [0, 0], [2, 0]])
    start, end = code_frame_spans(index_map, 4)
    assert start.tolist() == [0, 0, 2, -1] and end.tolist() == [2, 0, 2, -1]


