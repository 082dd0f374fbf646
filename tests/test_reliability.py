"""Reliability of ingestion: job leases and heartbeats, the stale-job reaper, retries through a
real database outage, a broker outage seen by the API, and processes migrating one database
together. (A worker SIGKILLed mid-video is in tests/test_topology.py.)"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from indexer.leases import LeaseHolder, holder_is_dead, worker_identity
from indexer.pipeline import VideoIngestor
from indexer.reaper import reap_stale_jobs
from indexer.samples import _stripes, write_video
from indexer.service import build_runtime, load_encoder
from indexer.tasks import CeleryQueue, LazyIngestor, backoff_seconds, make_celery
from search.api import create_app
from search.catalog import Catalog, JobLeased
from search.db import upgrade
from search.settings import Settings
from search.tables import Status, utcnow
from tests.conftest import REPO, settings_env, temporary_database
from tests.test_catalog import catalog, database_url, force_job  # noqa: F401  (fixtures: both databases)
from tests.test_celery import wait_for


def _ago(seconds: float):
    return utcnow() - timedelta(seconds=seconds)


# ----- leases -----------------------------------------------------------------------------------
def test_a_live_lease_is_respected_and_a_stale_one_taken_over(catalog: Catalog) -> None:  # noqa: F811
    job = catalog.create_job(Path("/m/v.mp4"))
    assert catalog.start_job(job.id, "a/1", stale_before=_ago(60)).attempts == 1
    with pytest.raises(JobLeased, match="running on a/1"):
        catalog.start_job(job.id, "b/2", stale_before=_ago(60))  # a's heartbeat is fresh
    assert catalog.start_job(job.id, "a/1", stale_before=_ago(60)).attempts == 2  # a retries its own job
    assert catalog.heartbeat(job.id, "a/1")

    taken = catalog.start_job(job.id, "b/2", stale_before=_ago(-60))  # a's heartbeat counts as stale
    assert taken.worker == "b/2" and taken.attempts == 3
    assert not catalog.heartbeat(job.id, "a/1")  # a learns it lost the job
    assert catalog.heartbeat(job.id, "b/2")

    catalog.finish_job(job.id, Status.failed, error="bad file")
    assert catalog.start_job(job.id, "c/3") is None  # failed is final, like done


def test_reaper_requeues_stale_jobs_and_fails_poison_ones(catalog: Catalog, settings: Settings) -> None:  # noqa: F811
    settings = settings.with_overrides(heartbeat_seconds=0.1, job_stale_seconds=1.0, job_max_attempts=2)
    video = catalog.get_or_create_video(Path("/m/poison.mp4"), "p" * 64, 1)
    alive, dead, poison = (catalog.create_job(Path(f"/m/{n}.mp4")) for n in ("alive", "dead", "poison"))
    for job in (alive, dead, poison):
        catalog.start_job(job.id, "w/1")
    force_job(catalog, poison.id, video_id=video.id, attempts=2)
    force_job(catalog, dead.id, heartbeat_at=_ago(5))
    force_job(catalog, poison.id, heartbeat_at=_ago(5))
    sent: list[int] = []

    report = reap_stale_jobs(catalog, settings, sent.append)
    assert report.requeued == [dead.id] and sent == [dead.id] and report.failed == [poison.id]
    requeued = catalog.get_job(dead.id)
    assert requeued.status is Status.queued and requeued.worker is None and "w/1 stopped responding" in requeued.message
    failed = catalog.get_job(poison.id)
    assert failed.status is Status.failed and "gave up after 2 attempts" in failed.error
    assert catalog.get_video(video.id).status is Status.failed and "stopped responding" in catalog.get_video(video.id).error
    assert catalog.get_job(alive.id).status is Status.running  # its heartbeat is fresh

    assert reap_stale_jobs(catalog, settings, sent.append).requeued == []  # nothing twice

    force_job(catalog, alive.id, heartbeat_at=_ago(2))  # a stalled worker is found stale ...
    (stale,) = catalog.stale_jobs(_ago(1))
    assert stale.id == alive.id
    assert catalog.heartbeat(alive.id, "w/1")  # ... but renews its lease before the reaper acts
    assert not catalog.release_stale_job(stale, _ago(1), Status.queued, "too late")
    assert catalog.get_job(alive.id).status is Status.running


def test_a_worker_that_lost_its_lease_writes_nothing(settings: Settings, samples_dir: Path) -> None:
    settings = settings.with_overrides(heartbeat_seconds=0.05, job_stale_seconds=1.0, segment_frames=2, batch_segments=1)
    runtime = build_runtime(settings)
    job = runtime.catalog.create_job(samples_dir / "stripes.mp4")
    stolen = []

    def steal_on_first_progress(fraction: float) -> None:
        if not stolen:  # another worker takes the job over, as after a long stall of this one
            force_job(runtime.catalog, job.id, worker="thief/9", heartbeat_at=utcnow())
            stolen.append(fraction)
            time.sleep(0.3)  # a few heartbeats: this worker notices

    status = runtime.ingestor().run_job(job.id, steal_on_first_progress, worker="slow/1")
    assert status is Status.running and stolen
    assert runtime.catalog.count_segments() == 0
    assert runtime.catalog.get_job(job.id).worker == "thief/9"


# ----- a lease names its holder: a dead one on this machine is taken over at once ---------------
HOLD_LEASE = "from indexer.leases import worker_identity; print(worker_identity('pool'), flush=True); import time; time.sleep(600)"


def test_a_job_whose_holder_died_on_this_machine_is_taken_over_at_once(settings: Settings, samples_dir: Path) -> None:
    """A real process leases the job and is SIGKILLed; its heartbeat is still fresh (and would stay so
    for an hour), yet the next worker proves it dead -- its pid gone -- and runs the job at once."""
    runtime = build_runtime(settings.with_overrides(job_stale_seconds=3600))
    job = runtime.catalog.create_job(samples_dir / "snow.mp4")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        name = holder.stdout.readline().strip()
        assert runtime.catalog.start_job(job.id, name) is not None  # the (pool) process has the job
        assert not holder_is_dead(name)
        with pytest.raises(JobLeased):
            runtime.ingestor().run_job(job.id, worker=worker_identity("other"))  # alive: respected
    finally:
        holder.kill()
        holder.wait()
    assert holder_is_dead(name)
    assert runtime.ingestor().run_job(job.id, worker=worker_identity("redelivered")) is Status.done
    done = runtime.catalog.get_job(job.id)
    assert done.attempts == 2 and done.worker.startswith("redelivered/")


def test_a_holder_is_dead_only_when_provably_so() -> None:
    me = LeaseHolder.parse(worker_identity("me"))
    assert me is not None and me.pid == os.getpid() and not holder_is_dead(str(me))
    assert holder_is_dead(str(replace(me, started=me.started - 1)))  # its pid now belongs to a later process
    assert not holder_is_dead(str(replace(me, machine="elsewhere:boot:4026531836", pid=2**22 + 1)))  # not ours to judge
    assert not holder_is_dead("celery@old/123") and not holder_is_dead(None)  # names that prove nothing


def test_a_pool_process_killed_mid_job_is_replaced_without_beat(
    settings: Settings, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Only the worker's pool process is SIGKILLed: the broker redelivers the task to the new pool
    process, which takes the job over at once -- no `vidseek beat`, a lease good for an hour."""
    settings = settings.with_overrides(database_url=postgres_url, broker_url=redis_url, task_queue=f"pool-{uuid.uuid4().hex[:8]}")
    upgrade(settings.resolved_database_url)
    catalog = Catalog(settings.resolved_database_url)
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    long_video = write_video(media / "long_stripes.mp4", _stripes, seconds=97, fps=2)
    env = {**settings_env(settings), "VIDSEEK_JOB_STALE_SECONDS": "3600", "VIDSEEK_HEARTBEAT_SECONDS": "0.5",
           "VIDSEEK_LOG_FORMAT": "json"}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "indexer.cli", "worker", "--concurrency=1",
                               f"--hostname=pool-{uuid.uuid4().hex[:6]}@%h"], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        job = catalog.create_job(long_video)
        CeleryQueue(make_celery(settings)).enqueue(job.id)
        deadline = time.monotonic() + 180
        while not ((current := catalog.get_job(job.id)).status is Status.running and current.progress > 0):
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.05)
        pool = LeaseHolder.parse(current.worker)
        assert pool is not None and pool.pid != worker.pid
        os.kill(pool.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(catalog, job.id, timeout=180) is Status.done, (tmp_path / "worker.log").read_text()[-3000:]
        assert time.monotonic() - killed_at < 170
        done = catalog.get_job(job.id)
        assert done.attempts == 2 and LeaseHolder.parse(done.worker).pid != pool.pid
        assert "taking over the job of a dead worker" in (tmp_path / "worker.log").read_text()
        assert [s.ordinal for s in catalog.segments_of(done.video_id)] == list(range(9))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        catalog.dispose()


# ----- the content hash is claimed before encoding ------------------------------------------------
def test_a_claimed_video_is_waited_for_unless_its_job_is_dead(catalog: Catalog) -> None:  # noqa: F811
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "c" * 64, 1)
    first, second = catalog.create_job(Path("/m/v.mp4")), catalog.create_job(Path("/m/copy.mp4"))
    catalog.start_job(first.id, "a/1")
    catalog.start_job(second.id, "b/2")
    assert catalog.claim_video(first.id, video.id, _ago(60), lambda _: False) is None  # first claims it
    held = catalog.claim_video(second.id, video.id, _ago(60), lambda _: False)
    assert held is not None and (held.job_id, held.worker) == (first.id, "a/1")
    assert catalog.get_job(second.id).video_id is None
    assert catalog.claim_video(second.id, video.id, _ago(60), lambda worker: worker == "a/1") is None  # a/1 is dead
    assert catalog.get_job(second.id).video_id == video.id
    assert catalog.claim_video(first.id, video.id, _ago(60), lambda _: False).job_id == second.id  # b has it now
    force_job(catalog, second.id, heartbeat_at=_ago(120))  # b stopped renewing its lease
    assert catalog.claim_video(first.id, video.id, _ago(60), lambda _: False) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_same_video_submitted_twice_at_once_is_encoded_once(
    settings: Settings, samples_dir: Path, tmp_path: Path, postgres_url: str, backend: str
) -> None:
    if backend == "postgresql":
        settings = settings.with_overrides(database_url=postgres_url)
    runtime = build_runtime(settings)
    ingestor = runtime.ingestor()
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    copies = [media / name for name in ("one.mp4", "two.mp4")]
    for copy in copies:
        shutil.copy(samples_dir / "three_scenes.mp4", copy)
    first, second = (runtime.catalog.create_job(c) for c in copies)
    encodes: list[Path] = []
    encode = ingestor.encode_video

    def counting_encode(path, content_hash, progress=None):
        encodes.append(path)
        return encode(path, content_hash, progress)

    ingestor.encode_video = counting_encode
    results: dict[int, Status] = {}
    waiting = threading.Event()

    def run(job_id: int, worker: str) -> None:
        results[job_id] = ingestor.run_job(job_id, worker=worker)

    other = threading.Thread(target=run, args=(second.id, "w2/2"))

    def start_the_duplicate_midway(fraction: float) -> None:
        if not other.is_alive() and second.id not in results:
            other.start()  # the same content arrives on another worker while the first encodes it
            deadline = time.monotonic() + 60
            while "waiting for job" not in (runtime.catalog.get_job(second.id).message or ""):
                assert time.monotonic() < deadline, runtime.catalog.get_job(second.id).message
                time.sleep(0.05)
            waiting.set()

    results[first.id] = ingestor.run_job(first.id, start_the_duplicate_midway, worker="w1/1")
    other.join(timeout=120)
    assert waiting.is_set() and results == {first.id: Status.done, second.id: Status.done}
    assert encodes == [copies[0].resolve()]  # encoded once
    joined = runtime.catalog.get_job(second.id)
    assert joined.video_id == runtime.catalog.get_job(first.id).video_id
    assert joined.message == f"already indexed (by job {first.id})"
    assert [s.ordinal for s in runtime.catalog.segments_of(joined.video_id)] == [0, 1, 2]
    runtime.catalog.dispose()


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    for retries in range(12):
        ceiling = min(300.0, 2.0 * 2**retries)
        delays = [backoff_seconds(retries) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# ----- outages ----------------------------------------------------------------------------------
class CuttableProxy:
    """A TCP proxy to PostgreSQL that can be cut: open connections are dropped and new ones are
    closed at once, as when the database host becomes unreachable; then restored."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, direct_url: str) -> str:
        return direct_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.services
def test_jobs_survive_a_database_outage_with_backoff_retries(
    settings: Settings, postgres_url: str, redis_url: str, samples_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = CuttableProxy()
    flaky = settings.with_overrides(database_url=proxy.url(postgres_url), broker_url=redis_url,
                                    task_queue=f"test-{uuid.uuid4().hex[:8]}")
    upgrade(postgres_url)
    direct = Catalog(postgres_url)  # the test's own view, not through the proxy
    encoder = load_encoder(flaky)
    app = make_celery(flaky, LazyIngestor(lambda: VideoIngestor(flaky, Catalog(flaky.database_url), encoder)))
    caplog.set_level(logging.WARNING, logger="indexer.tasks")
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
            job = direct.create_job(samples_dir / "blue_square.mp4")
            proxy.cut()
            CeleryQueue(app).enqueue(job.id)
            time.sleep(2.5)  # the first attempt meets the outage
            proxy.restore()
            assert wait_for(direct, job.id, timeout=90) is Status.done
    finally:
        proxy.close()
    retries = [r for r in caplog.records if r.getMessage() == "transient error, retrying"]
    assert retries and retries[0].job == job.id and "OperationalError" in retries[0].error
    done = direct.get_job(job.id)
    assert done.attempts == 1 and done.error is None  # no attempt was wasted or marked failed
    assert [s.ordinal for s in direct.segments_of(done.video_id)] == [0]
    direct.dispose()


def test_api_answers_503_and_fails_the_job_when_the_broker_is_down(settings: Settings, samples_dir: Path) -> None:
    unreachable = settings.with_overrides(broker_url="redis://127.0.0.1:1/0")
    runtime = build_runtime(unreachable)
    client = create_app(runtime.api_context()).test_client()
    resp = client.post("/api/videos", json={"path": str(samples_dir / "snow.mp4")})
    assert resp.status_code == 503 and "temporarily unavailable" in resp.get_json()["error"]["message"]
    job = runtime.catalog.get_job(1)
    assert job.status is Status.failed and "broker is unreachable" in job.error

    upload = client.post("/api/videos", data={"file": (io.BytesIO((samples_dir / "snow.mp4").read_bytes()), "s.mp4")},
                         content_type="multipart/form-data")
    assert upload.status_code == 503
    assert not list(unreachable.upload_dir.iterdir())  # the upload is not kept


@pytest.mark.services
def test_processes_starting_together_migrate_a_fresh_database_one_at_a_time() -> None:
    with temporary_database("vidseek_migrate") as url:
        start = time.time() + 3  # all four processes call upgrade() at the same instant
        script = ("import sys, time; from search.db import upgrade, current_revision\n"
                  f"time.sleep(max(0, {start} - time.time())); upgrade({url!r}); print(current_revision({url!r}))")
        procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in results]
        assert len({out.strip() for out, _ in results}) == 1

