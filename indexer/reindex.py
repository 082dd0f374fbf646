"""``vidseek reindex``: move the catalog to a new embedding space without downtime.

1. The target space (``--model`` / ``--pretrained`` / ``--encoder``) is registered as *building*;
   the current one as *active* if the catalog never registered one (``search.space_store``).
2. Every indexed video without segments in the target gets a re-indexing job (``Job.space_key`` =
   the target): run here one by one, or queued on the Celery workers (``VIDSEEK_BROKER_URL``), which
   load the target's model next to their own. Searches keep answering from the active space; a job
   writes only the target's segments of its video. Videos ingested meanwhile are encoded into both.
3. When the last video is in the target, the catalog switches the active space in one transaction
   (whoever writes the last one: this command or a worker); query processes follow on their next
   refresh tick, model and index together (``indexer.service.SpaceFollower``).

Resumable: running it again queues only what is still missing (re-using queued jobs, retrying failed
ones). A video that fails in the target keeps serving from the active space, and holds the switch
back until it succeeds on a later run or is deleted. ``vidseek reindex --drop-old`` then deletes the
vectors of the spaces that were active before.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from indexer.bulk import run_jobs
from indexer.spaces import active_settings, settings_space, space_settings
from search.catalog import Catalog
from search.settings import Settings
from search.space_store import SpaceConflict, SpaceInfo
from search.tables import Job, SpaceState, Status


def target_settings(settings: Settings, model: str | None, pretrained: str | None, encoder: str | None,
                    tempme_weights: Path | None) -> Settings:
    """``settings`` with the model options given on the command line (those not given unchanged)."""
    changes = {name: value for name, value in (("model", model), ("pretrained", pretrained), ("encoder", encoder),
                                               ("tempme_weights", tempme_weights)) if value is not None}
    return settings.with_overrides(**changes)


def queue_missing(catalog: Catalog, target: SpaceInfo) -> list[Job]:
    """A re-indexing job for every indexed video that has no segment in ``target`` (its queued or
    running one when it has one; a failed one is retried with a new job), in video id order."""
    jobs = []
    for video_id, path in catalog.videos_missing_from(target.key):
        job = catalog.reindex_job_of(video_id, target.key)
        jobs.append(job or catalog.create_job(Path(path), video_id, space_key=target.key))
    return jobs


def reindex(settings: Settings, target: Settings | None, wait: bool = True) -> int:
    """Re-index the catalog into the space of ``target`` (None: the space being built) and switch to
    it when complete. Returns the exit status: 0 switched (or queued, without ``wait``), 1 videos
    still missing, 2 nothing to do this way."""
    from indexer.pipeline import VideoIngestor
    from indexer.service import load_encoder, open_catalog

    catalog = open_catalog(settings)
    if target is None:
        space = catalog.space_in(SpaceState.building)
        if space is None:
            print("error: no re-index in progress: name the new space with --model and --pretrained", file=sys.stderr)
            return 2
    else:
        current = settings_space(active_settings(settings, catalog))
        try:
            space = catalog.begin_reindex(current, settings_space(target, SpaceState.building))
        except SpaceConflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with logging_redirect_tqdm():
        jobs = queue_missing(catalog, space)
        print(f"re-indexing into {space.key}: {len(jobs)} videos to encode")
        model = space_settings(settings, space)
        if not run_jobs(settings, catalog, jobs, lambda: VideoIngestor(model, catalog, load_encoder(model), load_encoder=load_encoder), wait):
            return 0
    return report(catalog, space, jobs)


def report(catalog: Catalog, space: SpaceInfo, jobs: Sequence[Job]) -> int:
    """Switch to ``space`` if complete and say where the re-index stands."""
    switched = catalog.activate_if_complete(space.key)
    progress = catalog.reindex_progress(space.key)
    failed = [j for j in (catalog.get_job(job.id) for job in jobs) if j is not None and j.status is Status.failed]
    for job in failed:
        print(f"  ✗ video {job.video_id} ({job.path}): {job.error}", file=sys.stderr)
    if switched:
        print(f"the active embedding space is now {space.key}; run `vidseek reindex --drop-old` to delete the old vectors")
        return 0
    print(f"{progress.done} of {progress.total} videos are in {space.key}: searches keep answering from the active "
          "space. Run `vidseek reindex` again to retry the missing ones (or delete videos that cannot be re-indexed).")
    return 1


def drop_old(settings: Settings) -> int:
    """Delete the vectors of the spaces that were active before (``--drop-old``)."""
    from indexer.service import open_catalog

    keys, deleted = open_catalog(settings).drop_retired()
    if not keys:
        print("no old embedding space to drop (the active space was never switched, or it was already dropped)")
        return 0
    print(f"dropped {deleted} segments of {', '.join(keys)}")
    return 0

