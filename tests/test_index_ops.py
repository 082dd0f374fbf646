"""Index operations at scale-out: ``vidseek index verify`` finding and repairing every kind of
difference from the catalog, IVF / IVF-PQ training, streaming rebuilds, and snapshots shared by
several processes (never loaded half-written)."""

from __future__ import annotations

import threading
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from indexer.cli import cmd_index
from indexer.service import open_catalog, open_index, settings_space_key
from models.factory import model_embed_dim
from search.catalog import Catalog, SegmentRecord
from search.db import upgrade
from search.segment_index import SegmentIndex, _folder_lock
from search.settings import Settings
from search.vector_index import MIN_TRAIN, IndexOptions, IndexState, VectorIndex

DIM = 16


def _unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fill(catalog: Catalog, videos: int, per_video: int, key: str = "space") -> dict[int, np.ndarray]:
    """``videos`` videos of ``per_video`` random segments each; returns segment id -> vector."""
    vectors = {}
    for v in range(videos):
        video = catalog.get_or_create_video(Path(f"/m/{v}.mp4"), f"{v:064d}", 1)
        batch = _unit(per_video, seed=v)
        records = [SegmentRecord(i, float(i), i + 1.0, 1, None, x) for i, x in enumerate(batch)]
        vectors.update(zip(catalog.replace_segments(video.id, records, key), batch))
    return vectors


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    return Catalog(url)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_verify_finds_and_repairs_every_difference(catalog: Catalog, tmp_path: Path, kind: str) -> None:
    vectors = _fill(catalog, videos=6, per_video=5)
    index = SegmentIndex(catalog, tmp_path / "idx", "space", DIM, kind, refresh_seconds=0)
    report = index.verify()
    assert report.consistent and (report.catalog, report.indexed) == (30, 30)

    ids = sorted(vectors)
    index.index.remove([ids[0], ids[1]])  # missing
    index.index.add(np.array([ids[2]]), _unit(1, seed=99))  # stale vector
    index.index._index.add_with_ids(vectors[ids[3]][None], np.array([ids[3]]))  # stored twice
    index.index.add(np.array([ids[-1] + 1000]), _unit(1, seed=98))  # never in the catalog
    found = index.verify()
    assert (found.missing, found.mismatched, found.duplicated, found.extra) == (2, 1, 1, 1)
    assert not found.consistent and not found.repaired and found.indexed == 30

    fixed = index.verify(repair=True)
    assert fixed.repaired and fixed.missing == 2
    assert index.verify().consistent
    for sid in (ids[0], ids[2], ids[3]):
        scores, found_ids = index.search(vectors[sid], 1)
        assert found_ids[0] == sid and scores[0] == pytest.approx(1.0, abs=1e-5)
    reloaded = SegmentIndex(catalog, tmp_path / "idx", "space", DIM, kind, refresh_seconds=0)
    assert reloaded.verify().consistent  # the repair was saved


def test_verify_compares_fp16_lists_with_the_rounded_catalog_vectors(catalog: Catalog, tmp_path: Path) -> None:
    """An IVF index with float16 lists (VIDSEEK_INDEX_LISTS=fp16) holds rounded vectors, up to ~2e-4
    from the catalog's: verify compares them rounded as the index rounds them, so a healthy index is
    consistent and a stale vector is still found."""
    vectors = _fill(catalog, videos=6, per_video=5)
    settings = Settings(data_dir=tmp_path, index_auto_at=20, index_lists="fp16", index_refresh_seconds=0)
    index = open_index(settings, catalog, "space", DIM)
    assert index.options == IndexOptions("auto", auto_at=20, search_threads=settings.resolved_search_threads, lists="fp16")
    assert index.verify().consistent and index.structure == "ivf"
    held = index.index.vectors(np.array(sorted(vectors)))
    assert np.abs(held - np.stack([vectors[i] for i in sorted(vectors)])).max() > 1e-4  # really rounded
    stale = sorted(vectors)[2]
    index.index.add(np.array([stale]), _unit(1, seed=99))
    assert index.verify().mismatched == 1
    assert index.verify(repair=True).repaired and index.verify().consistent


def test_a_snapshot_whose_lists_differ_from_the_setting_is_rebuilt(catalog: Catalog, tmp_path: Path) -> None:
    """Changing VIDSEEK_INDEX_LISTS takes effect at the next start: a snapshot saved with float32
    lists is not served when float16 ones are asked for (nor the reverse), but rebuilt from the
    catalog; a snapshot that fits is loaded as it is."""
    vectors = _fill(catalog, videos=6, per_video=5)
    rebuilt = []
    for lists in ("fp32", "fp16", "fp16", "fp32"):
        settings = Settings(data_dir=tmp_path, index_auto_at=20, index_lists=lists, index_refresh_seconds=0)
        index = open_index(settings, catalog, "space", DIM)
        rebuilt.append(index.state.segment_watermark == 0)  # nothing loaded: the first refresh reads the catalog
        assert (index.refresh().added == len(vectors)) == rebuilt[-1]
        assert index.index.list_storage == lists and len(index) == len(vectors) and index.verify().consistent
        index.save()
    assert rebuilt == [True, True, False, True]  # the second fp16 start served the first one's snapshot


def test_healthz_names_the_list_storage_served_after_the_setting_changes(settings: Settings) -> None:
    """`vidseek index rebuild` saves float32 lists; an API started with VIDSEEK_INDEX_LISTS=fp16
    rebuilds instead of serving that snapshot, and /healthz says which storage it searches."""
    from indexer.service import build_runtime
    from search.api import create_app

    catalog = open_catalog(settings)
    key, dim = settings_space_key(settings), model_embed_dim(settings.model, settings.model_config_dir)
    video = catalog.get_or_create_video(Path("/m/a.mp4"), "a" * 64, 1)
    catalog.replace_segments(video.id, [SegmentRecord(i, i, i + 1, 1, None, x) for i, x in enumerate(_unit(60, dim=dim))], key)
    fp32 = settings.with_overrides(index_auto_at=20)
    assert cmd_index(fp32, Namespace(action="rebuild", check=False)) == 0
    assert open_index(fp32, catalog, key, dim).index.list_storage == "fp32"

    runtime = build_runtime(fp32.with_overrides(index_lists="fp16"))
    runtime.index.refresh(force=True)
    health = create_app(runtime.api_context()).test_client().get("/healthz").get_json()
    assert (health["index"], health["index_lists"], health["index_segments"]) == ("ivf", "fp16", 60)


def test_verify_on_a_snapshot_with_a_wrong_watermark(catalog: Catalog, tmp_path: Path) -> None:
    """The failure a torn snapshot would cause: the state claims segments the index lacks."""
    _fill(catalog, videos=2, per_video=4)
    folder = tmp_path / "idx"
    index = SegmentIndex(catalog, folder, "space", DIM, refresh_seconds=0)
    index.refresh()
    half = VectorIndex(DIM)
    batch = next(catalog.iter_embeddings("space", 0))
    ids = batch.ids
    half.add(ids[:4], batch.vectors[:4])
    half.save(folder, IndexState("space", DIM, "flat", int(ids[-1]), index.state.tombstone_watermark))
    torn = SegmentIndex(catalog, folder, "space", DIM, refresh_seconds=0)
    assert len(torn) == 4 and torn.refresh().added == 0  # the watermark hides the gap from refreshes
    assert torn.verify().missing == 4 and torn.verify(repair=True).repaired and len(torn) == 8


def test_index_verify_command(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    catalog = open_catalog(settings)
    key, dim = settings_space_key(settings), model_embed_dim(settings.model, settings.model_config_dir)
    video = catalog.get_or_create_video(Path("/m/a.mp4"), "a" * 64, 1)
    ids = catalog.replace_segments(video.id, [SegmentRecord(i, i, i + 1, 1, None, x) for i, x in enumerate(_unit(6, dim=dim))], key)
    assert cmd_index(settings, Namespace(action="rebuild", check=False)) == 0
    index = open_index(settings, catalog, key, dim)  # the kind the CLI opens (auto by default)
    index.index.remove([ids[0]])
    index.save()
    capsys.readouterr()

    assert cmd_index(settings, Namespace(action="verify", check=True)) == 1
    checked = capsys.readouterr()
    assert "missing 1, extra 0" in checked.out and "does not match" in checked.err
    assert cmd_index(settings, Namespace(action="verify", check=False)) == 0
    assert "repaired" in capsys.readouterr().out
    assert cmd_index(settings, Namespace(action="verify", check=True)) == 0
    assert "matches the catalog" in capsys.readouterr().out


def test_ivf_indexes_search_exactly_until_trained_then_train_once() -> None:
    options = IndexOptions("ivf")
    index = VectorIndex(DIM, options)
    first = _unit(MIN_TRAIN - 1, seed=1)
    index.add(np.arange(len(first)), first)
    assert not index.trained
    np.testing.assert_array_equal(index.search(first[:50], 1)[1][:, 0], np.arange(50))  # exact
    index.add(np.array([10**6]), _unit(1, seed=2))
    assert index.trained and len(index) == MIN_TRAIN
    cpu = index._cpu_index()
    assert cpu.nlist == options.nlist_for(MIN_TRAIN) and cpu.nprobe == max(1, cpu.nlist // 8)
    hits = index.search(first[:200], 1)[1][:, 0]
    assert (hits == np.arange(200)).mean() > 0.9
    assert index.ids().tolist() == sorted([*range(len(first)), 10**6])


def test_rebuild_trains_ivfpq_on_a_sample_and_streams_the_rest(catalog: Catalog, tmp_path: Path) -> None:
    vectors = _fill(catalog, videos=12, per_video=1000)
    options = IndexOptions("ivfpq", nlist=64, nprobe=16, pq_m=8)
    index = SegmentIndex(catalog, tmp_path / "idx", "space", DIM, options)
    assert index._training_sample(12_000).shape == (12_000 // max(1, 12_000 // MIN_TRAIN), DIM)
    report = index.rebuild()
    assert report.total == 12_000 and index.index.trained
    assert index.index._cpu_index().nlist == 64 and index.index._cpu_index().nprobe == 16
    assert index.verify().consistent  # ids only: IVF-PQ vectors are lossy
    ids = np.array(sorted(vectors)[:100])
    hits = index.index.search(np.stack([vectors[i] for i in ids]), 10)[1]
    assert np.mean([i in row for i, row in zip(ids, hits)]) > 0.8

    # searches re-score IVF-PQ's candidates exactly: true cosine scores, best first
    query = vectors[ids[0]]
    scores, found = index.search(query, 50)
    assert found[0] == ids[0] and scores[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(scores, [vectors[i] @ query for i in found], atol=1e-6)
    assert (np.diff(scores) <= 0).all()


def test_snapshots_are_never_loaded_half_written(catalog: Catalog, tmp_path: Path) -> None:
    """One process saves snapshots over and over while another loads them: every load pairs an
    index file with its own state file (the watermark equals the number of vectors here)."""
    folder = tmp_path / "idx"
    stop = threading.Event()

    def writer() -> None:
        n = 1
        while not stop.is_set():
            index = VectorIndex(DIM)
            index.add(np.arange(1, n + 1), _unit(n, seed=n))
            with _folder_lock(folder):
                index.save(folder, IndexState("space", DIM, "flat", n, 0))
            n = n % 300 + 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        loads, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline:
            loaded = SegmentIndex(catalog, folder, "space", DIM, refresh_seconds=3600)
            assert len(loaded) == loaded.state.segment_watermark
            loads += 1
    finally:
        stop.set()
        thread.join()
    assert loads > 10


def _clustered(n: int, seed: int, centres: int = 20) -> np.ndarray:
    """Unit vectors around ``centres`` fixed random directions (real embeddings cluster)."""
    rng = np.random.default_rng(seed)
    c = _unit(centres, seed=99)
    v = c[rng.integers(0, centres, n)] + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _add_video(catalog: Catalog, number: int, vectors: np.ndarray) -> dict[int, np.ndarray]:
    video = catalog.get_or_create_video(Path(f"/m/{number}.mp4"), f"{number:064d}", 1)
    records = [SegmentRecord(i, float(i), i + 1.0, 1, None, x) for i, x in enumerate(vectors)]
    return dict(zip(catalog.replace_segments(video.id, records, "space"), vectors))


def test_auto_index_is_exact_flat_until_its_threshold_then_ivf_with_the_exact_top_10(
    catalog: Catalog, tmp_path: Path
) -> None:
    options = IndexOptions("auto", auto_at=2000)
    index = SegmentIndex(catalog, tmp_path / "idx", "space", DIM, options, refresh_seconds=0)
    vectors = _add_video(catalog, 0, _clustered(1500, seed=1))
    queries = _clustered(20, seed=7)
    index.search(queries[0], 10)  # a search refreshes: 1500 segments, still exact flat
    assert len(index) == 1500 and not index.index.trained and index.index.nlist == 0
    assert index.structure == "flat"

    vectors |= _add_video(catalog, 1, _clustered(1000, seed=2))
    index.search(queries[0], 10)  # 2500 >= 2000: switched to IVF by this refresh, no restart
    assert len(index) == 2500 and index.index.trained and index.structure == "ivf"
    assert index.index.nlist == options.nlist_for(2500)
    ids = np.array(sorted(vectors))
    matrix = np.stack([vectors[i] for i in ids])
    for query in queries:
        exact = ids[np.argsort(-(matrix @ query), kind="stable")[:10]]
        scores, found = index.search(query, 10)
        assert found.tolist() == exact.tolist()
        np.testing.assert_allclose(scores, matrix[np.searchsorted(ids, found)] @ query, atol=1e-5)

    vectors |= _add_video(catalog, 2, _clustered(3000, seed=3))  # 5500: twice the lists it was trained with
    index.search(queries[0], 10)
    assert len(index) == 5500 and index.index.nlist == options.nlist_for(5500) >= 2 * options.nlist_for(2500)

    # a process starting over a catalog already past the threshold builds IVF at once
    fresh = SegmentIndex(catalog, tmp_path / "other", "space", DIM, options)
    assert fresh.refresh(force=True).total == 5500 and fresh.index.trained
    # and one starting from the saved snapshot loads it as it is
    reloaded = SegmentIndex(catalog, tmp_path / "other", "space", DIM, options)
    assert len(reloaded) == 5500 and reloaded.index.trained
    assert reloaded.search(queries[0], 10)[1].tolist() == fresh.search(queries[0], 10)[1].tolist()


def test_a_search_does_not_wait_for_a_refresh_in_progress(catalog: Catalog, tmp_path: Path) -> None:
    _fill(catalog, videos=1, per_video=50)
    index = SegmentIndex(catalog, tmp_path / "idx", "space", DIM, "flat", refresh_seconds=0)
    index.refresh(force=True)
    with index._lock:  # another thread is refreshing (e.g. switching an auto index to IVF)
        _, found = index.search(_unit(1, seed=0)[0], 5)
    assert len(found) == 5
