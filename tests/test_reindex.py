"""``vidseek reindex``: a new embedding space built while searches go on, switched to atomically, resumable,
a video failing in it serving from the old one, ``--drop-old`` -- on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flask.testing import FlaskClient
from sqlalchemy import select

from indexer.bulk import ingest_paths
from indexer.cli import main
from indexer.pipeline import VideoIngestor
from indexer.service import Runtime, SpaceFollower, build_runtime
from indexer.spaces import settings_space
from models.backbone import ClipBackbone
from search.api import create_app
from search.settings import Settings
from search.tables import Job, SpaceState, Status
from tests.conftest import TINY_MODEL, settings_env, temporary_database

KEY = {"X-API-Key": "test-key"}
VIDEOS = ("red_ball", "blue_square", "three_scenes")


@pytest.fixture(scope="session")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: ClipBackbone) -> Path:
    """The tiny architecture with other weights (the first ones plus noise): another embedding space."""
    generator = torch.Generator().manual_seed(1)
    state = {name: (t + 0.05 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t)
             for name, t in tiny_backbone.model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights-b") / "tiny_open_clip_b.pt"
    torch.save(state, path)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def lib_settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    """The test settings with an API key, on a fresh SQLite or PostgreSQL catalog."""
    settings = settings.with_overrides(api_key="test-key")
    if request.param == "sqlite":
        yield settings
        return
    with temporary_database("vidseek_reindex") as url:
        yield settings.with_overrides(database_url=url)


@pytest.fixture()
def media(lib_settings: Settings, samples_dir: Path) -> Path:
    """Copies of three sample videos in a media root of the test's own (so one can be removed)."""
    folder = lib_settings.media_roots[1]
    folder.mkdir(parents=True, exist_ok=True)
    for name in VIDEOS:
        shutil.copyfile(samples_dir / f"{name}.mp4", folder / f"{name}.mp4")
    return folder


@pytest.fixture()
def env(lib_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI's environment reproduces ``lib_settings``."""
    for name, value in settings_env(lib_settings).items():
        if name.startswith("VIDSEEK_"):
            monkeypatch.setenv(name, value)
    return lib_settings


@pytest.fixture()
def runtime(env: Settings, media: Path) -> Runtime:
    """The three videos ingested in the first space; a serving runtime following the active space."""
    assert ingest_paths(env, [media]) == 0
    return build_runtime(env)


@pytest.fixture()
def client(runtime: Runtime) -> Iterator[FlaskClient]:
    """The API of ``runtime``, its index refreshed and the active space followed in the background."""
    runtime.index.refresh(force=True)
    runtime.index.refresh_in_background()
    context = runtime.api_context()
    follower = SpaceFollower(runtime, context)
    follower.follow_in_background()
    yield create_app(context).test_client()
    follower.stop()


def reindex_args(checkpoint: Path) -> list[str]:
    return ["reindex", "--model", TINY_MODEL, "--pretrained", str(checkpoint)]


def space_of(settings: Settings, checkpoint: Path) -> str:
    return settings_space(settings.with_overrides(pretrained=str(checkpoint))).key


def wait_for_space(client: FlaskClient, key: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get("/healthz").get_json()
        if body["space"] == key:
            return body
        time.sleep(0.1)
    raise AssertionError(f"the process did not switch to {key}")


class Searcher(threading.Thread):
    """Searches through the API without pause until stopped, recording every answer."""

    def __init__(self, client: FlaskClient):
        super().__init__(daemon=True)
        self.client, self.stop, self.answers = client.application.test_client(), threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            resp = self.client.get("/api/search", query_string={"q": "a red ball", "k": 5})
            body = resp.get_json()
            self.answers.append((resp.status_code, body.get("space"), sorted(h["video_id"] for h in body.get("hits", []))))


def test_reindex_switches_the_space_once_while_searches_go_on_then_drops_the_old(
    env: Settings, runtime: Runtime, client: FlaskClient, second_checkpoint: Path
) -> None:
    old, new = runtime.queries.space.key, space_of(env, second_checkpoint)
    assert old != new and client.get("/healthz").get_json()["reindex"] is None
    searcher = Searcher(client)
    searcher.start()
    try:
        assert main(reindex_args(second_checkpoint)) == 0
        health = wait_for_space(client, new)
        time.sleep(0.3)  # a few searches after the switch
    finally:
        searcher.stop.set()
        searcher.join(30)
    assert health["reindex"] is None and health["model"].startswith(TINY_MODEL)
    statuses = {status for status, _, _ in searcher.answers}
    spaces = [space for _, space, _ in searcher.answers]
    assert statuses == {200}, searcher.answers[-3:]
    assert spaces[0] == old and spaces[-1] == new
    assert sum(a != b for a, b in zip(spaces, spaces[1:])) == 1  # one switch, never back
    assert all(len(hits) == len(VIDEOS) for _, _, hits in searcher.answers)  # every video, in both spaces
    catalog = runtime.catalog
    assert [(s.key, s.state) for s in catalog.spaces()] == [(old, SpaceState.retired), (new, SpaceState.active)]
    assert {v.embedding_key for v in catalog.list_videos()[0]} == {new}
    video = catalog.list_videos()[0][0]
    listed = client.get(f"/api/videos/{video.id}").get_json()
    assert listed["segments"] and len(listed["segments"]) == len(catalog.segments_of(video.id, new))

    in_new = catalog.count_segments(new)
    assert catalog.count_segments(old) > 0 and in_new > 0
    assert main(["reindex", "--drop-old"]) == 0
    assert catalog.count_segments(old) == 0 and catalog.count_segments() == in_new
    assert [s.key for s in catalog.spaces()] == [new]
    assert main(["index", "rebuild"]) == 0  # the index of the active space, rebuilt from the catalog
    fresh = build_runtime(env)
    assert fresh.queries.space.key == new and fresh.index.refresh(force=True).total == in_new
    body = client.get("/api/search", query_string={"q": "a red ball", "k": 5}).get_json()
    assert body["space"] == new and len(body["hits"]) == len(VIDEOS)
    assert main(["reindex", "--drop-old"]) == 0  # nothing left to drop: says so


def test_an_interrupted_reindex_continues_where_it_stopped(
    env: Settings, runtime: Runtime, second_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = runtime.queries.space.key, space_of(env, second_checkpoint)
    run_job = VideoIngestor.run_job
    calls = []

    def interrupted_after_one(self: VideoIngestor, job_id: int, *args, **kwargs) -> Status:
        calls.append(job_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl+C between two videos
        return run_job(self, job_id, *args, **kwargs)

    monkeypatch.setattr(VideoIngestor, "run_job", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        main(reindex_args(second_checkpoint))
    catalog = runtime.catalog
    progress = catalog.reindex_progress(new)
    assert (progress.done, progress.total) == (1, len(VIDEOS))
    assert catalog.active_space_key() == old and catalog.space(new).state is SpaceState.building
    monkeypatch.setattr(VideoIngestor, "run_job", run_job)
    assert main(["reindex"]) == 0  # without model options: the re-index in progress
    assert catalog.active_space_key() == new
    with catalog.session() as s:  # the second run re-used the two jobs left queued: one job per video, run once
        jobs = s.scalars(select(Job).where(Job.space_key == new)).all()
    assert len(jobs) == len(VIDEOS) and {(j.status, j.attempts) for j in jobs} == {(Status.done, 1)}
    assert catalog.count_segments(new) == catalog.count_segments(old)  # every video is in the new space


def test_a_video_failing_in_the_new_space_serves_from_the_old_one_until_dropped(
    env: Settings, runtime: Runtime, client: FlaskClient, media: Path, samples_dir: Path, second_checkpoint: Path
) -> None:
    old, new = runtime.queries.space.key, space_of(env, second_checkpoint)
    catalog = runtime.catalog
    (media / "blue_square.mp4").unlink()  # re-encoding it will fail
    broken = next(v.id for v in catalog.list_videos()[0] if v.title == "blue_square")

    assert main(reindex_args(second_checkpoint)) == 1
    assert catalog.active_space_key() == old
    video = catalog.get_video(broken)
    assert video.status is Status.done and video.embedding_key == old  # still indexed, in the old space
    health = client.get("/healthz").get_json()
    assert health["space"] == old
    assert health["reindex"] == {"target": new, "done": 2, "total": 3, "failed": 1}
    assert "re-indexing: 2 / 3 videos, 1 failed" in client.get("/").get_data(as_text=True)
    body = client.get("/api/search", query_string={"q": "a red ball", "k": 5}).get_json()
    assert body["space"] == old and broken in [h["video_id"] for h in body["hits"]]

    # a video ingested during the re-index lands in both spaces
    shutil.copyfile(samples_dir / "snow.mp4", media / "snow.mp4")
    assert ingest_paths(env, [media / "snow.mp4"]) == 0
    snow = next(v.id for v in catalog.list_videos()[0] if v.title == "snow")
    assert catalog.segments_of(snow, old) and catalog.segments_of(snow, new)
    assert catalog.reindex_progress(new).done == 3

    assert main(["reindex"]) == 1  # retried, fails again: still held back
    assert main(["reindex", "--pretrained", "random"]) == 2  # one re-index at a time
    assert client.delete(f"/api/videos/{broken}", headers=KEY).status_code == 204  # dropped explicitly
    assert main(["reindex"]) == 0
    body = wait_for_space(client, new)
    assert body["reindex"] is None
    hits = client.get("/api/search", query_string={"q": "a red ball", "k": 5}).get_json()
    assert hits["space"] == new and sorted(h["video_id"] for h in hits["hits"]) == sorted(
        v.id for v in catalog.list_videos()[0])


def test_reindex_refuses_the_active_space_and_bad_options(
    env: Settings, second_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["reindex"]) == 2  # nothing in progress and no model named
    assert "no re-index in progress" in capsys.readouterr().err
    assert main(["reindex", "--pretrained", env.pretrained]) == 2  # the space the catalog already has
    assert "already the active space" in capsys.readouterr().err
    assert main(reindex_args(second_checkpoint)) == 0  # an empty catalog switches at once
    assert main(["reindex", "--pretrained", "random"]) == 0
    assert main(["reindex", "--drop-old", "--model", TINY_MODEL]) == 2
    assert main(["reindex", "--encoder", "nonsense"]) == 2
    assert "VIDSEEK_ENCODER must be one of" in capsys.readouterr().err


@pytest.mark.services
def test_celery_workers_reindex_and_switch_the_space(
    settings: Settings, redis_url: str, samples_dir: Path, second_checkpoint: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``vidseek reindex --no-wait`` queues the jobs on a real worker (Redis, PostgreSQL), which loads the new
    space's model beside its own and switches the active space when it writes the last video."""
    from tests.test_celery import running_worker

    with temporary_database("vidseek_reindex") as url:
        embedded = settings.with_overrides(database_url=url)
        assert ingest_paths(embedded, [samples_dir / "red_ball.mp4", samples_dir / "stripes.mp4"]) == 0
        queued = embedded.with_overrides(broker_url=redis_url, task_queue=f"test-reindex-{time.monotonic_ns()}")
        for name, value in settings_env(queued).items():
            if name.startswith("VIDSEEK_"):
                monkeypatch.setenv(name, value)
        old, new = settings_space(queued).key, space_of(queued, second_checkpoint)
        runtime = build_runtime(embedded)
        with running_worker(queued, tmp_path / "worker.log"):
            assert main([*reindex_args(second_checkpoint), "--no-wait"]) == 0
            assert "queued 2 jobs" in capsys.readouterr().out
            deadline = time.monotonic() + 180
            while runtime.catalog.active_space_key() != new and time.monotonic() < deadline:
                time.sleep(0.5)
        assert runtime.catalog.active_space_key() == new, (tmp_path / "worker.log").read_text()[-3000:]
        assert runtime.catalog.space(old).state is SpaceState.retired
        assert runtime.catalog.count_segments(new) == runtime.catalog.count_segments(old) > 0
        follower = SpaceFollower(runtime)
        assert follower.check() and runtime.queries.search("a red ball").space == new
        follower.stop()
        runtime.catalog.dispose()
