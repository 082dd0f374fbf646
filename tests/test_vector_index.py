from pathlib import Path

import faiss
import numpy as np
import pytest

from search.catalog import Catalog, SegmentRecord
from search.db import upgrade
from search.segment_index import SegmentIndex
from search.vector_index import IndexOptions, IndexState, VectorIndex


def _unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_search_remove_save_load(kind: str, tmp_path: Path) -> None:
    vectors = _unit(3000)
    ids = np.arange(10, 3010, dtype=np.int64)
    index = VectorIndex(16, kind)
    index.add(ids, vectors)
    assert len(index) == 3000
    scores, found = index.search(vectors[:5], 3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert scores[:, 0] == pytest.approx(1.0, abs=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first

    index.remove(ids[:2])
    assert len(index) == 2998
    _, found = index.search(vectors[:2], 5)
    assert not set(found.ravel().tolist()) & {10, 11}

    index.save(tmp_path, IndexState("space", 16, kind, 3009, 0))
    loaded, state = VectorIndex.load(tmp_path)
    assert state == IndexState("space", 16, kind, 3009, 0)
    assert len(loaded) == 2998
    assert loaded.search(vectors[2:3], 1)[1][0, 0] == 12


def test_exact_flat_search_matches_brute_force() -> None:
    vectors, queries = _unit(500, seed=1), _unit(7, seed=2)
    index = VectorIndex(16, "flat")
    index.add(np.arange(500), vectors)
    _, found = index.search(queries, 10)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert found.tolist() == expected.tolist()


def test_an_ivf_search_split_among_threads_finds_what_one_thread_finds() -> None:
    """One query's probed lists split among two OpenMP threads (parallel_mode 1): the same top k as
    one thread, in the same order, and a batch of queries still searched query by query."""
    vectors, queries = _unit(12_000, seed=3), _unit(6, seed=4)
    threads_before = faiss.omp_get_max_threads()
    one, two = (VectorIndex(16, IndexOptions("ivf", nlist=64, nprobe=16, search_threads=t)) for t in (1, 2))
    for index in (one, two):
        index.add(np.arange(12_000), vectors)
    for q in queries:
        s1, i1 = one.search(q[None], 10)
        s2, i2 = two.search(q[None], 10)
        assert two._index.parallel_mode == 1 and one._index.parallel_mode == 0
        assert i2.tolist() == i1.tolist() and np.allclose(s2, s1, atol=1e-6)
    s1, i1 = one.search(queries, 10)
    s2, i2 = two.search(queries, 10)
    assert two._index.parallel_mode == 0  # several queries: in parallel over the queries, as FAISS does
    assert i2.tolist() == i1.tolist() and np.allclose(s2, s1, atol=1e-6)
    assert faiss.omp_get_max_threads() == threads_before  # this thread's OpenMP count is put back


def test_readding_an_id_replaces_its_vector() -> None:
    index = VectorIndex(16, "flat")
    v = _unit(2)
    index.add(np.array([5]), v[:1])
    index.add(np.array([5]), v[1:])
    assert len(index) == 1
    assert index.search(v[1:], 1)[0][0, 0] == pytest.approx(1.0, abs=1e-5)


def test_empty_index_and_k_larger_than_size() -> None:
    index = VectorIndex(16, "flat")
    scores, ids = index.search(_unit(1), 5)
    assert scores.shape == (1, 0) and ids.shape == (1, 0)
    index.add(np.array([1, 2]), _unit(2))
    assert index.search(_unit(1), 50)[1].shape == (1, 2)


def test_unreadable_snapshot_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "segments.json").write_text("{not json")
    assert VectorIndex.load(tmp_path) is None


def _records(vectors: np.ndarray) -> list[SegmentRecord]:
    return [SegmentRecord(i, float(i), float(i + 1), 1, None, v) for i, v in enumerate(vectors)]


def _indexed_video(tmp_path: Path) -> tuple[Catalog, int, list[int], SegmentIndex]:
    """A catalog with one video of 3 segments, and an index refreshed from it: (catalog, video id,
    segment ids, index)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    catalog = Catalog(url)
    video = catalog.get_or_create_video(Path("/a.mp4"), "a" * 64, 1)
    ids = catalog.replace_segments(video.id, _records(_unit(3, seed=3)), "space")
    index = SegmentIndex(catalog, tmp_path / "idx", "space", 16, refresh_seconds=0)
    assert index.refresh().added == 3
    return catalog, video.id, ids, index


def test_segment_index_follows_the_catalog(tmp_path: Path) -> None:
    catalog, a_id, a_ids, index = _indexed_video(tmp_path)

    b = catalog.get_or_create_video(Path("/b.mp4"), "b" * 64, 1)
    b_vecs = _unit(2, seed=4)
    b_ids = catalog.replace_segments(b.id, _records(b_vecs), "space")
    other = catalog.get_or_create_video(Path("/c.mp4"), "c" * 64, 1)
    catalog.replace_segments(other.id, _records(_unit(4, 8)), "another-space")
    catalog.delete_video(a_id)
    report = index.refresh()
    assert (report.added, report.removed, report.total) == (2, 3, 2)
    assert index.search(b_vecs[1], 5)[1].tolist()[0] == b_ids[1]
    assert not set(index.search(b_vecs[0], 5)[1].tolist()) & set(a_ids)
    # the segment -> video map follows the same additions and tombstones
    assert index.videos_of(np.array(b_ids + a_ids)).tolist() == [b.id, b.id, -1, -1, -1]

    index.save()
    reopened = SegmentIndex(catalog, tmp_path / "idx", "space", 16, refresh_seconds=0)
    assert len(reopened) == 2 and reopened.refresh().added == 0
    assert reopened.videos_of(np.array(b_ids)).tolist() == [b.id, b.id]
    # a snapshot saved before the map was kept: the map is read from the catalog
    (tmp_path / "idx" / "segments.owners.npy").unlink()
    older = SegmentIndex(catalog, tmp_path / "idx", "space", 16, refresh_seconds=0)
    assert older.videos_of(np.array(b_ids + a_ids)).tolist() == [b.id, b.id, -1, -1, -1]

    # a snapshot of another embedding space is not used
    assert len(SegmentIndex(catalog, tmp_path / "idx", "space-v2", 16)) == 0

    (tmp_path / "idx" / "segments.faiss").unlink()
    (tmp_path / "idx" / "segments.json").unlink()
    rebuilt = SegmentIndex(catalog, tmp_path / "idx", "space", 16)
    assert rebuilt.rebuild().total == 2
    assert sorted(rebuilt.search(b_vecs[0], 5)[1].tolist()) == sorted(b_ids)
    assert rebuilt.videos_of(np.array(b_ids)).tolist() == [b.id, b.id]


def test_verify_finds_and_repairs_a_wrong_segment_owner(tmp_path: Path) -> None:
    _, video_id, ids, index = _indexed_video(tmp_path)
    index.owners.add(np.array([ids[1]]), np.array([video_id + 7]))  # as a damaged snapshot would say
    index.owners.add(np.array([9999]), np.array([video_id]))  # a segment the catalog does not have
    report = index.verify()
    assert (report.mismatched, report.extra, report.consistent) == (1, 1, False)
    assert index.verify(repair=True).repaired
    assert index.verify().consistent
    assert index.videos_of(np.array([*ids, 9999])).tolist() == [video_id] * 3 + [-1]


def test_fp16_lists_halve_the_ivf_index_and_keep_scores_within_2e_4() -> None:
    """``lists="fp16"`` (VIDSEEK_INDEX_LISTS): the same IVF search over float16-rounded vectors; the
    snapshot is about half, scores are inner products with the rounded vectors (within 2e-4 of the
    exact ones for unit vectors), and what the index holds is what ``stored_form`` predicts."""
    vectors, queries = _unit(12_000, seed=5), _unit(8, seed=6)
    full, half = (VectorIndex(16, IndexOptions("ivf", nlist=64, nprobe=64, lists=lists)) for lists in ("fp32", "fp16"))
    for index in (full, half):
        index.add(np.arange(12_000), vectors)
    assert isinstance(full._index, faiss.IndexIVFFlat) and isinstance(half._index, faiss.IndexIVFScalarQuantizer)
    assert len(faiss.serialize_index(half._index)) < 0.7 * len(faiss.serialize_index(full._index))
    overlap = 0
    for q in queries:
        scores, found = half.search(q[None], 10)
        np.testing.assert_allclose(scores[0], vectors[found[0]] @ q, atol=2e-4)
        np.testing.assert_allclose(scores[0], half.stored_form(vectors[found[0]]) @ q, atol=1e-5)
        overlap += len(set(found[0].tolist()) & set(full.search(q[None], 10)[1][0].tolist()))
    assert overlap >= 0.9 * 10 * len(queries)
    stored = half.vectors(np.arange(50))
    assert np.array_equal(stored, half.stored_form(vectors[:50])) and not np.array_equal(stored, vectors[:50])
    assert np.array_equal(full.stored_form(vectors[:50]), vectors[:50])
    with pytest.raises(ValueError, match="fp16"):
        IndexOptions("ivf", lists="bf16")
