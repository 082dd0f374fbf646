"""Catalog behaviour on both supported databases: SQLite (embedded) and PostgreSQL (production)."""

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text, update

from search.catalog import Catalog, SegmentRecord, SummaryRecord
from search.db import current_revision, upgrade
from search.tables import CLIP_SPACE, LLM_SPACE, Job, Status
from tests.conftest import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def catalog(database_url: str):
    upgrade(database_url)
    cat = Catalog(database_url)
    yield cat
    with cat.session() as s:  # the PostgreSQL database is shared by the session's tests
        for table in ("segment_tombstones", "segments", "jobs", "videos"):
            s.execute(text(f"DELETE FROM {table}"))
    cat.dispose()


def force_job(catalog: Catalog, job_id: int, **values: object) -> None:
    """Write job columns directly, as a worker on another machine (or time) would have left them."""
    with catalog.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _segments(n: int, dim: int = 4, seed: int = 0) -> list[SegmentRecord]:
    rng = np.random.default_rng(seed)
    return [SegmentRecord(i, 12.0 * i, 12.0 * (i + 1), 12, f"t/{i}.jpg", rng.standard_normal(dim).astype(np.float32)) for i in range(n)]


def test_migration_creates_schema_on_empty_database(database_url: str) -> None:
    upgrade(database_url)
    assert current_revision(database_url) is not None
    cat = Catalog(database_url)
    tables = set(inspect(cat.engine).get_table_names())
    cat.dispose()
    assert {"videos", "segments", "jobs", "segment_tombstones", "alembic_version"} <= tables


def test_video_identity_is_the_content_hash(catalog: Catalog) -> None:
    a = catalog.get_or_create_video(Path("/m/a.mp4"), "h" * 64, 10)
    b = catalog.get_or_create_video(Path("/m/copy_of_a.mp4"), "h" * 64, 10)
    assert a.id == b.id and a.title == "a" and a.status is Status.queued
    assert catalog.find_video_by_hash("h" * 64).id == a.id


def test_replace_segments_is_atomic_and_tombstones_old_ones(catalog: Catalog) -> None:
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "a" * 64, 1)
    first = catalog.replace_segments(video.id, _segments(3), "space-1", duration=36.0)
    assert catalog.get_video(video.id).status is Status.done
    assert catalog.get_video(video.id).duration == 36.0
    second = catalog.replace_segments(video.id, _segments(2, seed=1), "space-1")
    assert [s.id for s in catalog.segments_of(video.id)] == second
    assert min(second) > max(first)
    _, deleted = catalog.tombstones_after(0)
    assert sorted(deleted) == sorted(first)


def test_embeddings_round_trip_in_id_order(catalog: Catalog) -> None:
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "b" * 64, 1)
    records = _segments(5)
    ids = catalog.replace_segments(video.id, records, "space-1")
    other = catalog.get_or_create_video(Path("/m/w.mp4"), "c" * 64, 1)
    catalog.replace_segments(other.id, _segments(2), "space-2")
    batches = list(catalog.iter_embeddings("space-1", after_id=0, batch=2))
    got_ids = np.concatenate([b.ids for b in batches])
    assert got_ids.tolist() == ids and [len(b.ids) for b in batches] == [2, 2, 1]
    assert np.concatenate([b.video_ids for b in batches]).tolist() == [video.id] * 5
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), np.stack([r.embedding for r in records]))
    owned_ids, owners = catalog.segment_owners("space-1", up_to=ids[2])
    assert owned_ids.tolist() == ids[:3] and owners.tolist() == [video.id] * 3
    assert list(catalog.iter_embeddings("space-1", after_id=ids[-1])) == []
    assert catalog.count_segments("space-2") == 2


def test_segment_at_finds_the_segment_holding_a_time(catalog: Catalog) -> None:
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "d" * 64, 1)
    ids = catalog.replace_segments(video.id, _segments(3), "space-1")  # 0-12, 12-24, 24-36 s
    other = catalog.get_or_create_video(Path("/m/w.mp4"), "e" * 64, 1)
    catalog.replace_segments(other.id, _segments(3), "space-1")
    at = {t: catalog.segment_at(video.id, t) for t in (-1.0, 0.0, 11.9, 12.0, 30.0, 99.0)}
    assert [at[t].id for t in sorted(at)] == [ids[0], ids[0], ids[0], ids[1], ids[2], ids[2]]
    assert (at[30.0].video_id, at[30.0].start, at[30.0].end, at[30.0].thumbnail) == (video.id, 24.0, 36.0, "t/2.jpg")
    assert catalog.segment_at(12345, 1.0) is None


def test_delete_video_removes_segments_and_records_tombstones(catalog: Catalog) -> None:
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "d" * 64, 1)
    ids = catalog.replace_segments(video.id, _segments(2), "s")
    job = catalog.create_job(Path("/m/v.mp4"))
    catalog.attach_video(job.id, video.id)
    assert catalog.delete_video(video.id) == ["t/0.jpg", "t/1.jpg"]
    assert catalog.get_video(video.id) is None and catalog.named_segments(ids) == {}
    assert sorted(catalog.tombstones_after(0)[1]) == ids
    assert catalog.get_job(job.id).video_id is None
    assert catalog.delete_video(video.id) is None


def test_job_lifecycle(catalog: Catalog) -> None:
    job = catalog.create_job(Path("/m/x.mp4"))
    assert job.status is Status.queued and job.attempts == 0
    started = catalog.start_job(job.id)
    assert started.status is Status.running and started.attempts == 1
    catalog.finish_job(job.id, Status.done, message="ok")
    done = catalog.get_job(job.id)
    assert done.status is Status.done and done.progress == 1.0 and done.finished_at is not None
    assert catalog.start_job(job.id) is None  # a finished job is never run again
    assert catalog.start_job(10**9) is None


def test_one_summary_per_video_and_space(catalog: Catalog) -> None:
    video = catalog.get_or_create_video(Path("/m/s.mp4"), "e" * 64, 1)
    clip = SummaryRecord("holitom", 3, b"clip-bytes")
    llm = SummaryRecord("vqtoken", 2, b"llm-bytes", LLM_SPACE, "llava:tiny|vqtoken")
    catalog.replace_segments(video.id, _segments(1), "space-1", summaries=[clip, llm])
    assert catalog.summaries([video.id], "space-1") == {video.id: SummaryRecord("holitom", 3, b"clip-bytes", CLIP_SPACE, "space-1")}
    assert catalog.summaries([video.id], "llava:tiny|vqtoken", LLM_SPACE) == {video.id: llm}
    assert catalog.summaries([video.id], "space-1", LLM_SPACE) == {}  # the key is per space
    catalog.replace_segments(video.id, _segments(1), "space-1", summaries=[clip])  # re-ingested without the LLM
    assert catalog.summaries([video.id], "llava:tiny|vqtoken", LLM_SPACE) == {}
    with pytest.raises(ValueError, match="one summary per space"):
        catalog.replace_segments(video.id, _segments(1), "space-1", summaries=[clip, clip])


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with temporary_database("vidseek_migration") as url:
        yield url


def test_migration_0003_keeps_existing_summaries_as_clip_space(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0002")
    cat = Catalog(empty_database_url)
    with cat.session() as s:
        s.execute(text("INSERT INTO videos (path, title, content_hash, size_bytes, status, frames_sampled, created_at, updated_at) "
                       "VALUES ('/m/a.mp4', 'a', :h, 1, 'done', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"h": "f" * 64})
        vid = s.execute(text("SELECT id FROM videos")).scalar_one()
        s.execute(text("INSERT INTO video_summaries (video_id, method, embedding_key, token_count, data, created_at) "
                       "VALUES (:v, 'holitom', 'space-1', 3, :d, CURRENT_TIMESTAMP)"), {"v": vid, "d": b"old"})
    upgrade(empty_database_url)
    assert cat.summaries([vid], "space-1") == {vid: SummaryRecord("holitom", 3, b"old", CLIP_SPACE, "space-1")}
    assert inspect(cat.engine).get_pk_constraint("video_summaries")["constrained_columns"] == ["video_id", "space"]
    cat.dispose()


def test_alembic_command_line_creates_the_schema(tmp_path: Path) -> None:
    """`alembic upgrade head` from the repository root, as an operator runs it."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "VIDSEEK_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert current_revision(url) is not None
    cat = Catalog(url)
    assert {"videos", "segments", "jobs"} <= set(inspect(cat.engine).get_table_names())
    cat.dispose()


def test_query_path_lookups_survive_a_database_restart(catalog: Catalog, database_url: str) -> None:
    """The id lookups (segments with their videos' names, vectors) read in one statement each, without a
    ping at checkout: a pooled connection the server dropped is replaced and the read tried again."""
    video = catalog.get_or_create_video(Path("/m/restart.mp4"), "r" * 64, 10)
    ids = catalog.replace_segments(video.id, _segments(3), "space-1", duration=36.0)
    assert sorted(catalog.named_segments(ids)) == sorted(ids)
    if database_url.startswith("postgresql"):  # what a server restart does to every pooled connection
        with catalog.session() as s:
            s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    named = catalog.named_segments(ids)
    assert [named[i].meta.start for i in ids] == [0.0, 12.0, 24.0]
    assert {n.meta.video_id for n in named.values()} == {video.id}
    assert {(n.name.title, n.name.file_name, n.name.folder) for n in named.values()} == {("restart", "restart.mp4", "m")}
    found, vectors = catalog.embeddings_of(ids)
    assert sorted(found.tolist()) == sorted(ids) and vectors.shape == (3, 4)
