"""Search filters (video ids, duration, folder), min_score and offset: checked against a brute-force
answer over the catalog's stored segment embeddings, through QueryService, the REST API and the CLI
(the tag and ingestion-time filters: tests/test_hybrid_and_tags.py)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from benchmarks.filter_bench import main
from indexer.service import build_runtime
from search.api import create_app
from search.api.context import ApiContext
from search.catalog import Catalog, SegmentRecord
from search.db import upgrade
from search.filters import SearchFilters
from search.query import EXTRA_MOMENTS, QueryService
from search.segment_index import SegmentIndex
from search.settings import Settings
from search.vector_index import IndexOptions
from tests.test_cli import vidseek

DIM = 16
KEY = "space"
FOLDERS = ("a", "ab", "b")  # "a" must not match the files in "ab"


@dataclass
class Library:
    """A synthetic catalog: segment vectors and each video's folder and duration."""

    catalog: Catalog
    root: Path
    vectors: dict[int, np.ndarray]  # segment id -> float32 [DIM]
    video_of: dict[int, int]  # segment id -> video id
    folder: dict[int, str]  # video id -> folder name under root
    duration: dict[int, float]  # video id -> seconds


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_library(url: str, root: Path, videos: int = 300, per_video: int = 10, seed: int = 0) -> Library:
    """``videos`` videos of ``per_video`` segments each, clustered around a centre per video."""
    upgrade(url)
    catalog = Catalog(url)
    rng = np.random.default_rng(seed)
    lib = Library(catalog, root, {}, {}, {}, {})
    for i, centre in enumerate(_unit(rng, videos)):
        folder, duration = FOLDERS[i % len(FOLDERS)], float(i % 60 + 1)
        video = catalog.get_or_create_video(root / folder / f"v{i}.mp4", f"{seed}{i:063d}", 1)
        segs = centre + 0.5 * _unit(rng, per_video)
        segs = (segs / np.linalg.norm(segs, axis=1, keepdims=True)).astype(np.float32)
        records = [SegmentRecord(j, float(j), j + 1.0, 1, None, x) for j, x in enumerate(segs)]
        for sid, x in zip(catalog.replace_segments(video.id, records, KEY, duration=duration), segs):
            lib.vectors[sid], lib.video_of[sid] = x, video.id
        lib.folder[video.id], lib.duration[video.id] = folder, duration
    return lib


def brute_force(lib: Library, query: np.ndarray, videos: set[int], k: int, offset: int = 0,
                min_score: float = -2.0) -> list[tuple[int, float]]:
    """(video id, best segment score) of the ranked videos among ``videos``, by numpy dot products."""
    best: dict[int, float] = {}
    for sid, x in lib.vectors.items():
        vid, score = lib.video_of[sid], float(x @ query)
        if vid in videos and score >= min_score:
            best[vid] = max(best.get(vid, -2.0), score)
    return sorted(best.items(), key=lambda p: -p[1])[offset:offset + k]


def ranked(result) -> list[tuple[int, float]]:
    return [(h.video_id, h.score) for h in result.hits]


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [v for v, _ in got] == [v for v, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    folder = tmp_path_factory.mktemp("filters").resolve()
    return build_library(f"sqlite:///{folder / 'catalog.db'}", folder / "media")


def query_service(lib: Library, folder: Path, kind: str, queries: dict[str, np.ndarray]) -> QueryService:
    """A query service over ``lib``; IVF is trained with 16 lists (probing 2 of them when unfiltered)."""
    options = IndexOptions(kind, nlist=16) if kind == "ivf" else IndexOptions(kind)
    index = SegmentIndex(lib.catalog, folder, KEY, DIM, options, refresh_seconds=0)
    index.refresh(force=True)
    if kind == "ivf":
        index.index.train(np.stack(list(lib.vectors.values())))
        assert index.structure == "ivf" and index.index.nlist == 16
    return QueryService(lib.catalog, index, queries.__getitem__, candidates=50)


QUERIES = {f"q{i}": v for i, v in enumerate(_unit(np.random.default_rng(7), 4))}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_results_are_the_brute_force_answer(library: Library, tmp_path: Path, kind: str) -> None:
    service = query_service(library, tmp_path / "idx", kind, QUERIES)
    everyone = set(library.folder)
    for name, query in QUERIES.items():
        in_a = {v for v, f in library.folder.items() if f == "a"}
        got = service.search(name, 10, filters=SearchFilters(folder=library.root / "a"))
        assert_same(ranked(got), brute_force(library, query, in_a, 10))
        short = {v for v, d in library.duration.items() if 10 <= d <= 12}
        got = service.search(name, 10, filters=SearchFilters(min_duration=10, max_duration=12))
        assert_same(ranked(got), brute_force(library, query, short, 10))
        # The 12 videos that match the query worst: a filter after an unfiltered top-50 would find none.
        worst = {v for v, _ in brute_force(library, query, everyone, len(everyone))[-12:]}
        got = service.search(name, 10, filters=SearchFilters(video_ids=tuple(worst)))
        assert len(got.hits) == 10
        assert_same(ranked(got), brute_force(library, query, worst, 10))


def test_min_score_drops_low_hits_and_offset_pages_without_overlap(library: Library, tmp_path: Path) -> None:
    service = query_service(library, tmp_path / "idx", "flat", QUERIES)
    query = QUERIES["q0"]
    everyone = set(library.folder)
    third = brute_force(library, query, everyone, 3)[-1][1]
    got = service.search("q0", 10, min_score=third)
    assert_same(ranked(got), brute_force(library, query, everyone, 10, min_score=third))
    assert len(got.hits) == 3 and all(m.score >= third for h in got.hits for m in [h.moment, *h.more])
    assert service.search("q0", 10, min_score=1.0).hits == []
    assert service.search("q0", 10, filters=SearchFilters(folder=library.root / "A")).hits == []  # case counts

    pages = [ranked(service.search("q0", 7, offset=offset)) for offset in (0, 7, 14)]
    ids = [v for page in pages for v, _ in page]
    assert len(ids) == len(set(ids)) == 21
    assert_same([p for page in pages for p in page], brute_force(library, query, everyone, 21))
    in_b = {v for v, f in library.folder.items() if f == "b"}
    second = service.search("q0", 5, filters=SearchFilters(folder=library.root / "b"), offset=5)
    assert_same(ranked(second), brute_force(library, query, in_b, 5, offset=5))


def test_the_query_path_reads_only_the_moments_it_returns(library: Library, tmp_path: Path) -> None:
    """Hits are grouped by video with the index's segment -> video map; the catalog is read once, for
    the moments returned (with their videos' names), not for every candidate."""
    service = query_service(library, tmp_path / "idx", "flat", QUERIES)
    reads: list[list[int]] = []
    named_segments = library.catalog.named_segments

    def spy(ids: list[int]):  # type: ignore[no-untyped-def]
        reads.append(list(ids))
        return named_segments(ids)

    service.catalog = type("Spied", (), {"named_segments": staticmethod(spy), "__getattr__":
                                         lambda _, name: getattr(library.catalog, name)})()
    for name, query in QUERIES.items():
        reads.clear()
        got = service.search(name, 5)
        assert_same(ranked(got), brute_force(library, query, set(library.folder), 5))
        assert len(reads) == 1 and len(reads[0]) <= 5 * (EXTRA_MOMENTS + 1) < service.candidates
        assert set(reads[0]) == {m.segment_id for h in got.hits for m in [h.moment, *h.more]}
        for hit in got.hits:
            assert hit.name.title == f"v{library.video_of[hit.moment.segment_id] - 1}"
            assert {library.video_of[m.segment_id] for m in [hit.moment, *hit.more]} == {hit.video_id}


def test_a_video_deleted_since_the_index_refreshed_is_left_out(tmp_path: Path) -> None:
    lib = build_library(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "media", videos=30, per_video=5, seed=3)
    index = SegmentIndex(lib.catalog, tmp_path / "idx", KEY, DIM, refresh_seconds=3600)
    index.refresh(force=True)
    service = QueryService(lib.catalog, index, QUERIES.__getitem__, candidates=50)
    query = QUERIES["q0"]
    best = brute_force(lib, query, set(lib.folder), 1)[0][0]
    lib.catalog.delete_video(best)  # the index still holds its segments and their owner
    got = service.search("q0", 5)
    assert_same(ranked(got), brute_force(lib, query, set(lib.folder) - {best}, 5))


@pytest.fixture()
def client(library: Library, tmp_path: Path) -> FlaskClient:
    settings = Settings(data_dir=tmp_path / "data", media_roots=(library.root,), log_format="text")
    service = query_service(library, tmp_path / "idx", "flat", QUERIES)
    return create_app(ApiContext(settings, library.catalog, service.index, service)).test_client()


def test_api_filters_by_get_and_post(client: FlaskClient, library: Library) -> None:
    query = QUERIES["q1"]
    ids = sorted(library.folder)[:40:4]
    want = brute_force(library, query, set(ids), 3, offset=2)
    got = client.get(f"/api/search?q=q1&k=3&offset=2&video_ids={','.join(map(str, ids))}")
    assert got.status_code == 200
    assert_same([(h["video_id"], h["score"]) for h in got.get_json()["hits"]], want)
    posted = client.post("/api/search", json={"q": "q1", "k": 3, "offset": 2, "video_ids": ids})
    assert [h["video_id"] for h in posted.get_json()["hits"]] == [v for v, _ in want]

    short = {v for v, d in library.duration.items() if d <= 5 and library.folder[v] == "ab"}
    want = brute_force(library, query, short, 10)
    for resp in (client.get(f"/api/search?q=q1&folder={library.root / 'ab'}&max_duration=5"),
                 client.post("/api/search", json={"q": "q1", "folder": "ab", "max_duration": 5})):  # relative: first root
        assert resp.status_code == 200, resp.get_json()
        assert [h["video_id"] for h in resp.get_json()["hits"]] == [v for v, _ in want]

    empty = client.get("/api/search?q=q1&min_score=0.999")
    assert empty.status_code == 200 and empty.get_json()["hits"] == []


@pytest.mark.parametrize("params, message", [
    ("min_score=x", "min_score must be a number"),
    ("min_score=2", "min_score must be a number between -1 and 1"),
    ("min_score=nan", "min_score must be a number between -1 and 1"),
    ("offset=-1", "offset must be between 0 and 1000"),
    ("offset=1001", "offset must be between 0 and 1000"),
    ("video_ids=1,x", "video_ids must be comma-separated integers"),
    ("video_ids=-3", "video_ids must be between 0"),
    ("min_duration=-1", "min_duration must be a non-negative number"),
    ("max_duration=inf", "max_duration must be a non-negative number"),
    ("min_duration=9&max_duration=3", "min_duration must not exceed max_duration"),
    ("folder=/etc", "outside the media roots"),
    ("folder=../..", "outside the media roots"),
    ("tags=" + "x" * 41, "a tag must have 1 to 40 characters"),
    ("tags=a,b&tags=" + ",".join(f"t{i}" for i in range(19)), "tags must name 1 to 20 tags"),
    ("tags=%07", "control characters"),
    ("ingested_after=yesterday", "ingested_after must be an ISO 8601 date"),
    ("ingested_before=2026-13-01", "ingested_before must be an ISO 8601 date"),
    ("ingested_after=0001-01-01T00:00:00%2B05:00", "ingested_after is out of range"),
    ("ingested_after=2026-02-01&ingested_before=2026-02-01T01:00:00%2B01:00", "ingested_after must be before"),
    ("mode=fuzzy", "mode must be one of vector, hybrid"),
])
def test_api_refuses_bad_filter_values(client: FlaskClient, params: str, message: str) -> None:
    resp = client.get(f"/api/search?q=q1&{params}")
    assert resp.status_code == 400 and message in resp.get_json()["error"]["message"]


@pytest.mark.parametrize("body, message", [
    ({"video_ids": "1,2"}, "video_ids must be a list of integers"),
    ({"video_ids": [1, True]}, "video_ids must be a list of integers"),
    ({"video_ids": []}, "video_ids must name 1 to 1000 videos"),
    ({"video_ids": [2**64]}, "video_ids must be between 0"),
    ({"min_score": "0.5"}, "min_score must be a number"),
    ({"max_duration": 10**400}, "max_duration is out of range"),
    ({"offset": 1.5}, "offset must be an integer"),
    ({"folder": 3}, "folder must be a string"),
    ({"folder": "/etc"}, "outside the media roots"),
    ({"tags": "beach"}, "tags must be a list of strings"),
    ({"tags": ["beach", 2]}, "tags must be a list of strings"),
    ({"tags": []}, "tags must name 1 to 20 tags"),
    ({"tags": ["a,b"]}, "must not contain commas"),
    ({"ingested_after": 20260101}, "ingested_after must be a string"),
    ({"ingested_before": "soon"}, "ingested_before must be an ISO 8601 date"),
    ({"mode": ["hybrid"]}, "mode must be a string"),
    ({"mode": "text"}, "mode must be one of vector, hybrid"),
])
def test_api_refuses_bad_filter_bodies(client: FlaskClient, body: dict, message: str) -> None:
    resp = client.post("/api/search", json={"q": "q1", **body})
    assert resp.status_code == 400 and message in resp.get_json()["error"]["message"]


def test_filters_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    lib = build_library(postgres_url, tmp_path / "media", videos=60, per_video=4, seed=3)
    try:
        service = query_service(lib, tmp_path / "idx", "flat", QUERIES)
        videos = {v for v, f in lib.folder.items() if f == "a" and lib.duration[v] >= 20}
        got = service.search("q2", 5, filters=SearchFilters(folder=lib.root / "a", min_duration=20), offset=1)
        assert_same(ranked(got), brute_force(lib, QUERIES["q2"], videos, 5, offset=1))
    finally:
        with lib.catalog.session() as s:  # the PostgreSQL database is shared by the session's tests
            for table in ("segment_tombstones", "segments", "jobs", "videos"):
                s.execute(text(f"DELETE FROM {table}"))
        lib.catalog.dispose()


def test_cli_search_flags(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    for name in ("red_ball.mp4", "snow.mp4"):
        (media / name.removesuffix(".mp4")).mkdir(parents=True)
        shutil.copy(samples_dir / name, media / name.removesuffix(".mp4") / name)
    runtime = build_runtime(settings)
    for name in ("red_ball", "snow"):
        runtime.ingestor().run_job(runtime.catalog.create_job(media / name / f"{name}.mp4").id)
    snow = next(v for v in runtime.catalog.list_videos()[0] if v.title == "snow")

    found = vidseek(settings, "search", "a red ball", "-k", "5", "--video-id", str(snow.id), "--video-id", "999",
                    "--folder", str(media / "snow"), "--min-duration", "0", "--max-duration", "3600",
                    "--min-score", "-1", "--offset", "0")
    assert found.returncode == 0, found.stderr
    assert " snow " in found.stdout and "red_ball" not in found.stdout
    assert found.stdout.startswith(" 1. ")


def test_filter_benchmark_runs(capsys: pytest.CaptureFixture) -> None:
    main(["--segments", "2000", "--dim", "16", "--queries", "2", "--nlist", "16"])
    table = capsys.readouterr().out
    assert table.count("| flat |") == 5 and table.count("| ivf |") == 5 and "| 1% of segments | selector |" in table
    assert table.count("| widening (x4, at most 2) |") == 4
