"""The decoding producer thread: bounded, errors surface in the consumer, and it never outlives
its job (finished, failed or cancelled)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from indexer.decode import DecodeError, iter_sampled_frames
from indexer.leases import LeaseLost
from indexer.prefetch import Prefetcher
from indexer.segments import default_batch_segments
from indexer.service import build_runtime
from search.settings import Settings
from search.tables import Status


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("vidseek-decode", "test-prefetch"))]


def test_items_arrive_in_order_and_the_queue_bounds_the_lead() -> None:
    made: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(50):
            made.append(i)
            yield i

    with Prefetcher(numbers, depth=3, name="test-prefetch") as items:
        stream = iter(items)
        assert next(stream) == 0
        time.sleep(0.2)
        assert len(made) <= 1 + 3 + 1  # consumed, queued, and the one waiting for room
        assert list(stream) == list(range(1, 50))
    assert not _producer_threads()


def test_an_error_in_the_producer_is_the_same_error_in_the_consumer() -> None:
    failure = DecodeError("clip.mp4 is corrupt: decoding failed at 3.0s", kind="corrupt")

    def failing() -> Iterator[int]:
        yield 1
        raise failure

    with pytest.raises(DecodeError) as caught:
        with Prefetcher(failing, depth=2, name="test-prefetch") as items:
            list(items)
    assert caught.value is failure
    assert not _producer_threads()


def test_leaving_early_stops_the_producer_and_closes_its_generator() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with Prefetcher(endless, depth=2, name="test-prefetch") as items:
        for i in items:
            if i == 5:
                break
    assert closed.is_set() and not _producer_threads()


@pytest.fixture()
def ingest_settings(settings: Settings) -> Settings:
    return settings.with_overrides(segment_frames=2, batch_segments=1, decode="fast")  # the product default


def test_a_cancelled_job_stops_the_producer(ingest_settings: Settings, samples_dir: Path) -> None:
    """The lease is lost at the first progress report (the job is cancelled): the job gives up
    and the decoding thread is gone, though most of the video was never consumed."""
    runtime = build_runtime(ingest_settings)
    job = runtime.catalog.create_job(samples_dir / "three_scenes.mp4")
    seen_threads: list[str] = []

    def cancel(fraction: float) -> None:
        seen_threads.extend(t.name for t in _producer_threads())
        raise LeaseLost("cancelled")

    assert runtime.ingestor().run_job(job.id, cancel) is Status.running
    assert seen_threads == ["vidseek-decode-three_scenes.mp4"]  # it ran alongside the encoder
    assert not _producer_threads()


def test_a_decode_error_fails_the_job_with_the_decoders_message(ingest_settings: Settings, samples_dir: Path,
                                                                 tmp_path: Path) -> None:
    data = (samples_dir / "three_scenes.mp4").read_bytes()
    cut = tmp_path / "media" / "cut.mp4"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError) as direct:
        list(iter_sampled_frames(cut, ingest_settings.sample_fps, short_side=224, mode=ingest_settings.decode))
    runtime = build_runtime(ingest_settings)
    job = runtime.catalog.create_job(cut)
    assert runtime.ingestor().run_job(job.id) is Status.failed
    assert runtime.catalog.get_job(job.id).error == str(direct.value)
    assert not _producer_threads()


def test_batch_segments_auto_is_four_on_cpu_and_sized_by_device_memory_on_cuda(settings: Settings, monkeypatch) -> None:
    """``VIDSEEK_BATCH_SEGMENTS=0``: 4 on CPU; on CUDA ~384 frames per pass from 16 GiB up, fewer
    below (the heuristic of indexer/segments.py, awaiting a GPU measurement)."""
    assert Settings().batch_segments == 0
    assert build_runtime(settings).ingestor().batch_segments == 4
    assert build_runtime(settings.with_overrides(batch_segments=7)).ingestor().batch_segments == 7

    class Properties:
        def __init__(self, gib: float):
            self.total_memory = int(gib * 2**30)

    cuda = torch.device("cuda")
    for gib, segments in ((80, 32), (16, 32), (8, 16), (2, 4)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, gib=gib: Properties(gib))
        assert default_batch_segments(cuda, 12) == segments
