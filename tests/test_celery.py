"""The Celery path for real: a worker process on the machine's Redis and PostgreSQL ingests a video."""

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from indexer.tasks import CeleryQueue, make_celery
from search.catalog import Catalog
from search.db import upgrade
from search.settings import Settings
from search.tables import Status
from tests.conftest import REPO, settings_env

pytestmark = pytest.mark.services


def wait_for(catalog: Catalog, job_id: int, timeout: float) -> Status:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = catalog.get_job(job_id)
        if job.status in (Status.done, Status.failed):
            return job.status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {catalog.get_job(job_id).status} after {timeout}s")


@pytest.fixture()
def celery_settings(settings: Settings, postgres_url: str, redis_url: str) -> Settings:
    return settings.with_overrides(database_url=postgres_url, broker_url=redis_url, task_queue=f"test-{uuid.uuid4().hex[:8]}")


@contextmanager
def running_worker(settings: Settings, log_path: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``vidseek worker --concurrency=1 [args]`` for ``settings``, logging to ``log_path``; stopped afterwards."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", "worker", "--concurrency=1", f"--hostname=test-{uuid.uuid4().hex[:6]}@%h",
             *args],
            cwd=REPO, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def worker(celery_settings: Settings, tmp_path: Path):
    with running_worker(celery_settings, tmp_path / "worker.log") as proc:
        yield proc


def test_worker_ingests_a_video_through_redis(celery_settings: Settings, worker, samples_dir: Path, tmp_path: Path) -> None:
    upgrade(celery_settings.resolved_database_url)
    catalog = Catalog(celery_settings.resolved_database_url)
    queue = CeleryQueue(make_celery(celery_settings))
    job = catalog.create_job(samples_dir / "stripes.mp4")
    queue.enqueue(job.id)
    status = wait_for(catalog, job.id, timeout=120)
    assert status is Status.done, (tmp_path / "worker.log").read_text()[-3000:]
    done = catalog.get_job(job.id)
    assert done.attempts == 1 and done.progress == 1.0
    video = catalog.get_video(done.video_id)
    assert video.status is Status.done and len(catalog.segments_of(video.id)) == 1

    bad = tmp_path / "media" / "broken.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    bad_job = catalog.create_job(bad)
    queue.enqueue(bad_job.id)
    assert wait_for(catalog, bad_job.id, timeout=60) is Status.failed
    assert catalog.get_job(bad_job.id).error
    catalog.dispose()
