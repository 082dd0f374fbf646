"""The production topology as local processes, the way docker-compose runs it: an API process
(``vidseek serve``, gunicorn), two ingestion workers (``vidseek worker``) and ``vidseek beat``, on
the machine's Redis and a fresh PostgreSQL database. A folder is ingested end to end with
``vidseek ingest``, and one worker is SIGKILLed in the middle of a video: the job must be
finished by the other worker, with no duplicate segments and nothing half-written in the index.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError

from indexer.samples import _stripes, write_video
from search.catalog import Catalog
from search.settings import Settings
from search.tables import Job, Status
from tests.conftest import REPO, settings_env, temporary_database
from tests.test_cli import free_port

pytestmark = pytest.mark.services

LONG_SECONDS = 97  # 9 segments of 12 one-second samples; takes the tiny model a few seconds
NODES = {"worker-a": "wa@", "worker-b": "wb@"}  # process name -> Celery node name prefix
RELIABILITY_ENV = {  # short leases so that a dead worker is noticed within seconds
    "VIDSEEK_HEARTBEAT_SECONDS": "0.5",
    "VIDSEEK_JOB_STALE_SECONDS": "4",
    "VIDSEEK_REAP_INTERVAL_SECONDS": "0.5",
    "VIDSEEK_VISIBILITY_TIMEOUT": "3600",  # so the broker's redelivery cannot be what rescues the job
}


@pytest.fixture()
def fresh_postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database: every process of the topology migrates it at start, together."""
    with temporary_database("vidseek_topo") as url:
        yield url


class Processes:
    """vidseek subprocesses, each in its own process group (a worker and its pool children die
    together), logging to files; all stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "indexer.cli", *args], cwd=REPO, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def wait_until(condition, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_api(procs: Processes, base: str, timeout: float = 120) -> None:
    """Until the ``api`` process answers ``/healthz`` with ok (failing at once if it exits)."""

    def healthy() -> bool:
        assert procs.procs["api"].poll() is None, procs.log("api")
        try:
            return get_json(f"{base}/healthz")["status"] == "ok"
        except OSError:
            return False

    wait_until(healthy, timeout, "the API to answer /healthz")


def test_api_two_workers_and_beat_ingest_a_folder_and_survive_a_killed_worker(
    settings: Settings, fresh_postgres_url: str, redis_url: str, samples_dir: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for sample in sorted(samples_dir.glob("*.mp4")):
        shutil.copy(sample, media / sample.name)
    long_video = write_video(media / "long_stripes.mp4", _stripes, seconds=LONG_SECONDS, fps=2)
    (media / "notes.mp4").write_text("a text file named like a video\n" * 40)
    settings = settings.with_overrides(database_url=fresh_postgres_url, broker_url=redis_url,
                                       task_queue=f"topo-{uuid.uuid4().hex[:8]}")
    port = free_port()
    env = {**settings_env(settings), **RELIABILITY_ENV}
    procs = Processes(env, tmp_path)
    try:
        # Everything starts at once on an empty database (the migrations take turns).
        procs.start("api", "serve", "--port", str(port), "--workers", "1", "--threads", "4")
        procs.start("worker-a", "worker", "--hostname", "wa@%h")
        procs.start("worker-b", "worker", "--hostname", "wb@%h")
        procs.start("beat", "beat")
        ingest = subprocess.Popen([sys.executable, "-m", "indexer.cli", "ingest", str(media)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        catalog = Catalog(fresh_postgres_url)

        def long_job_midway() -> Job | None:
            try:
                with catalog.session() as s:
                    job = s.scalar(select(Job).where(Job.path == str(long_video.resolve())))
            except ProgrammingError:  # the processes have not created the schema yet
                return None
            return job if job is not None and job.status is Status.running and job.progress > 0 else None

        job = wait_until(long_job_midway, 180, "the long video to be half-way through ingestion", poll=0.05)
        victim = next(name for name, node in NODES.items() if job.worker.startswith(node))
        survivor = next(name for name in NODES if name != victim)
        procs.kill(victim)  # SIGKILL the worker and its pool process, mid-video

        base = f"http://127.0.0.1:{port}"
        wait_for_api(procs, base)
        out, err = ingest.communicate(timeout=240)
        assert ingest.returncode == 1, err  # the text file fails; everything else is indexed
        assert "indexed 7, already indexed 0, failed 1, rejected 0" in out, (out, err, procs.log(survivor))
        assert "notes.mp4" in err and "not a readable video" in err

        finished = catalog.get_job(job.id)
        assert finished.status is Status.done and finished.attempts == 2, procs.log("beat")
        assert finished.worker.startswith(NODES[survivor])
        assert "stale job re-queued" in procs.log("beat")

        # No duplicate segments: each video has its ordinals exactly once; the killed run wrote nothing.
        segments = catalog.segments_of(finished.video_id)
        assert [s.ordinal for s in segments] == list(range(math.ceil(LONG_SECONDS / 12)))
        assert all((settings.thumbnail_dir / s.thumbnail).is_file() for s in segments)
        total = catalog.count_segments()
        videos, count = catalog.list_videos(limit=100)
        assert count == 8
        assert total == sum(len({s.ordinal for s in catalog.segments_of(v.id)}) for v in videos)

        # The API's index holds exactly the catalog's segments and serves them.
        assert get_json(f"{base}/api/search?q=stripes&k=20")["hits"]
        # A 1000-character CJK query is 9 KB percent-encoded, past gunicorn's 4 KB request line: POST it.
        long_query = "条纹" * 500
        with pytest.raises(urllib.error.HTTPError) as too_long:
            get_json(f"{base}/api/search?{urllib.parse.urlencode({'q': long_query})}")
        assert too_long.value.code == 414  # gunicorn's own "URI Too Long"
        assert post_json(f"{base}/api/search", {"q": long_query, "k": 20})["query"] == long_query
        assert get_json(f"{base}/healthz")["index_segments"] == total
        failed = get_json(f"{base}/api/videos?status=failed")
        assert failed["total"] == 1 and "not a readable video" in failed["videos"][0]["error"]
        job_json = get_json(f"{base}/api/jobs/{job.id}")
        assert job_json["status"] == "done" and job_json["attempts"] == finished.attempts
        catalog.dispose()
    finally:
        procs.stop_all()
