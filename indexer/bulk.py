"""A bulk ingestion job: the files that paths name (confined to the media roots), a job per file not
yet indexed in the embedding space, run in this process or queued on the workers, waited for and
reported. Resumable: a file already indexed in the space is skipped, so a rerun picks up what is left."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from indexer.media import find_videos, sha256_file
from search.media_paths import MediaRejected, PathNotAllowed, confine, is_regular_file, require_utf8_name
from search.settings import Settings
from search.tables import Status

if TYPE_CHECKING:
    from indexer.pipeline import VideoIngestor
    from search.catalog import Catalog
    from search.tables import Job

log = logging.getLogger("vidseek")


def check_paths(settings: Settings, paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The video files that ``paths`` name (folders searched recursively), resolved and confined to
    the media roots, and a rejection message for every other one. A relative path is taken relative
    to the working directory, as a shell user expects; nothing is opened but the directory entries."""
    accepted, rejected = [], []
    for path in find_videos(Path.cwd() / p for p in paths):
        try:
            resolved = confine(path, settings.allowed_media_roots)
        except PathNotAllowed as exc:
            rejected.append(f"{exc} (set VIDSEEK_MEDIA_ROOTS)")
            continue
        if not is_regular_file(resolved):
            rejected.append(f"{path}: no such file")
            continue
        try:
            require_utf8_name(resolved)
        except MediaRejected as exc:
            rejected.append(str(exc))
            continue
        accepted.append(resolved)
    return accepted, rejected


def plan_jobs(catalog: Catalog, files: Sequence[Path], key: str) -> tuple[list[Job], int]:
    """Create a job for every file not yet indexed in embedding space ``key``.

    Returns (new jobs, number skipped as already indexed).
    """
    jobs, skipped = [], 0
    for path in tqdm(files, desc="checking", unit="file", leave=False):
        video = catalog.find_video_by_hash(sha256_file(path))
        if video is not None and video.status is Status.done and video.embedding_key == key:
            skipped += 1
            continue
        jobs.append(catalog.create_job(path))
    return jobs, skipped


def run_jobs_in_process(ingestor: VideoIngestor, jobs: Sequence[Job]) -> None:
    with tqdm(total=len(jobs), desc="ingesting", unit="video") as overall:
        for job in jobs:
            with tqdm(total=1000, desc=Path(job.path).name[:40], leave=False, bar_format="{l_bar}{bar}| {elapsed}") as bar:

                def progress(fraction: float) -> None:
                    bar.update(int(fraction * 1000) - bar.n)

                try:
                    ingestor.run_job(job.id, progress)
                except Exception as exc:  # recorded on the job; continue with the next video
                    log.error("ingestion failed", extra={"job": job.id, "error": str(exc)})
            overall.update(1)


def wait_for_jobs(catalog: Catalog, jobs: Sequence[Job], poll: float = 1.0) -> None:
    pending = {j.id for j in jobs}
    with tqdm(total=len(jobs), desc="ingesting (workers)", unit="video") as bar:
        while pending:
            for job_id in list(pending):
                job = catalog.get_job(job_id)
                if job is not None and job.status in (Status.done, Status.failed):
                    pending.discard(job_id)
                    bar.update(1)
            if pending:
                time.sleep(poll)


def report(catalog: Catalog, jobs: Sequence[Job], skipped: int, rejected: Sequence[str]) -> int:
    failed = []
    done = 0
    for job in jobs:
        current = catalog.get_job(job.id)
        if current is not None and current.status is Status.failed:
            failed.append(f"{current.path}: {current.error}")
        elif current is not None and current.status is Status.done:
            done += 1
    print(f"indexed {done}, already indexed {skipped}, failed {len(failed)}, rejected {len(rejected)}")
    for line in [*rejected, *failed]:
        print(f"  ✗ {line}", file=sys.stderr)
    return 1 if failed or rejected else 0


def ingest_paths(settings: Settings, paths: Sequence[Path], wait: bool = True, ingestor: VideoIngestor | None = None) -> int:
    """Ingest ``paths``; the model is loaded only once there is a file to encode."""
    from indexer.pipeline import VideoIngestor
    from indexer.service import load_encoder, open_catalog, settings_space_key
    from indexer.spaces import active_settings

    with logging_redirect_tqdm():
        files, rejected = check_paths(settings, paths)
        catalog = open_catalog(settings)
        settings = active_settings(settings, catalog)  # the model of the space searches answer from
        jobs, skipped = plan_jobs(catalog, files, ingestor.key if ingestor else settings_space_key(settings))
        make = (lambda: ingestor) if ingestor else (lambda: VideoIngestor(settings, catalog, load_encoder(settings), load_encoder=load_encoder))
        if not run_jobs(settings, catalog, jobs, make, wait):
            return 0
    return report(catalog, jobs, skipped, rejected)


def run_jobs(settings: Settings, catalog: Catalog, jobs: Sequence[Job], make_ingestor: Callable[[], VideoIngestor],
             wait: bool = True) -> bool:
    """Run ``jobs`` in this process (with the ingestor ``make_ingestor`` builds, only when there are
    jobs) or, with a broker, queue them on the workers and, with ``wait``, wait for them. Returns
    whether they are finished (False: queued, not waited for)."""
    from indexer.tasks import INGEST_TASK, make_celery

    if settings.runs_in_process:
        if jobs:
            run_jobs_in_process(make_ingestor(), jobs)
        return True
    app = make_celery(settings)
    for job in jobs:
        app.send_task(INGEST_TASK, args=[job.id])
    print(f"queued {len(jobs)} jobs on {settings.broker_url}")
    if wait:
        wait_for_jobs(catalog, jobs)
    return wait
