"""The bad-input corpus, part two: the cases not covered elsewhere, each with its expected outcome
and nothing else affected. Covered elsewhere (see README "Bad input"): zero-byte, truncated MP4,
text file named .mp4 (tests/test_decode.py, tests/test_pipeline.py), paths outside the media
roots and symlink escapes, 413 uploads, empty / 10k-character queries, undecodable query bytes,
k=-1 and k=10^9 (tests/test_api.py)."""

from __future__ import annotations

import fractions
import logging
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from indexer.bulk import check_paths, plan_jobs
from indexer.decode import iter_sampled_frames, probe
from indexer.service import Runtime, build_runtime, settings_space_key
from search.api import create_app
from search.settings import Settings
from search.tables import Status

PAGE = 4096


def write_frames(path: Path, times: list[float], codec: str = "mpeg4", fmt: str | None = None,
                 rate: fractions.Fraction | int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """A small video whose frame ``i`` is shown from ``times[i]`` seconds (brightness varies with i)."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, t in enumerate(times):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (i * 7) % 256
            img[(xx - i % width) ** 2 + (yy - height // 2) ** 2 < 64] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = round(t * rate)  # in the stream's time base, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def zero_avi_frame_rate(path: Path) -> Path:
    """Overwrite the frame rate an AVI declares (``avih`` microseconds per frame and the video
    ``strh`` rate) with 0, as broken writers do."""
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    data[avih + 8 : avih + 12] = struct.pack("<I", 0)
    strh = data.find(b"strh")  # fccType, fccHandler, dwFlags, wPriority, wLanguage, dwInitialFrames, dwScale, dwRate
    data[strh + 32 : strh + 36] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture()
def runtime(settings: Settings) -> Runtime:
    return build_runtime(settings.with_overrides(max_frames=240))


@pytest.fixture()
def good(runtime: Runtime, samples_dir: Path) -> int:
    """A video indexed before the bad input arrives: it must come out untouched."""
    job = runtime.catalog.create_job(samples_dir / "three_scenes.mp4")
    assert runtime.ingestor().run_job(job.id) is Status.done
    return runtime.catalog.get_job(job.id).video_id


def assert_untouched(runtime: Runtime, video_id: int) -> None:
    assert runtime.catalog.get_video(video_id).status is Status.done
    segments = runtime.catalog.segments_of(video_id)
    assert [s.ordinal for s in segments] == [0, 1, 2]
    query = np.frombuffer(segments[1].embedding, dtype="<f4")
    assert runtime.index.search(query, 1)[1][0] == segments[1].id


def ingest(runtime: Runtime, path: Path):
    job = runtime.catalog.create_job(path)
    runtime.ingestor().run_job(job.id)
    return runtime.catalog.get_job(job.id)


def test_zero_fps_header_is_indexed_on_the_decoders_timestamps(runtime: Runtime, good: int, tmp_path: Path) -> None:
    """An AVI that declares 0 fps: FFmpeg warns and falls back to 25 fps, so the frames are
    timed at 25 fps; the video is indexed on those times (the file gives no better ones)."""
    path = zero_avi_frame_rate(write_frames(tmp_path / "media" / "zero_fps.avi", [i / 4 for i in range(80)]))
    info = probe(path)
    assert info.fps == 25.0 and info.duration == pytest.approx(80 / 25)
    job = ingest(runtime, path)
    assert job.status is Status.done, job.error
    video = runtime.catalog.get_video(job.video_id)
    assert video.fps == 25.0 and video.frames_sampled == 4  # 3.2 s at 1 sample per second
    assert_untouched(runtime, good)


def test_sampling_without_a_frame_rate_follows_frame_timestamps(tmp_path: Path) -> None:
    """When a container states no frame rate at all (fps 0), frames are placed by their own
    timestamps; a variable-rate file keeps its real times."""
    path = write_frames(tmp_path / "vfr.mkv", [0.0, 0.4, 3.0, 3.1, 7.0, 9.5], codec="libx264", rate=1000)
    info = replace(probe(path), fps=0.0)
    frames = list(iter_sampled_frames(path, 1.0, info=info))
    # the frames on screen at 0 s | 1, 2 s | 3 s | 4, 5, 6 s | 7, 8, 9 s (each yielded once)
    assert [f.time for f in frames] == pytest.approx([0.0, 0.4, 3.0, 3.1, 7.0])
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]


def _peak_rss_growth(run) -> tuple[object, int]:
    """Run ``run()`` and return (its result, peak growth of this process's resident memory in bytes)."""
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE

    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], rss()) - base


def test_a_ten_hour_video_streams_in_bounded_memory(runtime: Runtime, good: int, tmp_path: Path) -> None:
    """10 hours at one frame every 10 s (3600 frames, 64x48): decoded front to back, sampled
    uniformly down to ``max_frames`` (240), encoded segment batch by segment batch."""
    path = write_frames(tmp_path / "media" / "ten_hours.mp4", [10.0 * i for i in range(3600)],
                        codec="libx264", rate=fractions.Fraction(1, 10))
    assert probe(path).duration == pytest.approx(36_000)
    job, growth = _peak_rss_growth(lambda: ingest(runtime, path))
    assert job.status is Status.done, job.error
    segments = runtime.catalog.segments_of(job.video_id)
    assert len(segments) == 20 and segments[-1].end == pytest.approx(36_000)
    assert segments[1].start == pytest.approx(12 * 36_000 / 240, abs=100)
    # The working set of one batch (4 segments of 12 frames, decoder, allocator) is ~200 MiB
    # whatever the length (measured: 360 and 3600 sampled frames peak alike); holding all 240
    # sampled frames at once would add ~190 MiB more (224x298 RGB + 224x224 float pixels each).
    assert growth < 350 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB"
    assert_untouched(runtime, good)


def test_audio_only_file_fails_with_the_reason(runtime: Runtime, good: int, tmp_path: Path) -> None:
    path = tmp_path / "media" / "tone.mp4"
    path.parent.mkdir()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    job = ingest(runtime, path)
    assert job.status is Status.failed and "no video stream (streams: audio)" in job.error
    assert job.attempts == 1  # a permanent error: failed at once, never retried
    assert runtime.catalog.get_video(job.video_id).error == job.error
    assert_untouched(runtime, good)


def test_non_utf8_file_names_are_refused_with_the_reason(runtime: Runtime, good: int, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    raw = media / Path(b"caf\xe9.mp4".decode("utf-8", "surrogateescape"))
    raw.write_bytes(b"\0" * 64)
    (media / "café.mp4").write_bytes(b"\0" * 64)
    files, rejected = check_paths(runtime.settings, [media])
    jobs, skipped = plan_jobs(runtime.catalog, files, settings_space_key(runtime.settings))
    assert [Path(j.path).name for j in jobs] == ["café.mp4"] and skipped == 0
    assert len(rejected) == 1 and "caf\ufffd.mp4: the file name is not valid UTF-8" in rejected[0]

    client = create_app(runtime.api_context()).test_client()
    resp = client.post("/api/videos", json={"path": str(raw)})
    assert resp.status_code == 422 and "not valid UTF-8" in resp.get_json()["error"]["message"]
    assert_untouched(runtime, good)


def test_a_still_image_named_like_a_video_is_refused(runtime: Runtime, good: int, tmp_path: Path) -> None:
    """FFmpeg's image demuxer opens a JPEG as a one-frame video; vidseek says what it is."""
    from PIL import Image

    photo = tmp_path / "media" / "holiday.mp4"
    photo.parent.mkdir(parents=True)
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(photo, format="JPEG")
    job = ingest(runtime, photo)
    assert job.status is Status.failed and job.error == "holiday.mp4 is an image, not a video (jpeg_pipe)"
    client = create_app(runtime.api_context()).test_client()
    resp = client.post("/api/videos", json={"path": str(photo)})
    assert resp.status_code == 422 and "is an image, not a video" in resp.get_json()["error"]["message"]
    assert_untouched(runtime, good)


def test_clients_get_short_reasons_and_operators_ffmpegs_own(runtime: Runtime, good: int, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """No FFmpeg errno numbers or server paths in the stored (client-visible) reason; the full
    FFmpeg message goes to the log for operators."""
    fake = tmp_path / "media" / "notes.mp4"
    fake.parent.mkdir(parents=True)
    fake.write_text("not a video\n" * 40)
    with caplog.at_level(logging.WARNING, logger="indexer.pipeline"):
        job = ingest(runtime, fake)
    assert job.error == "notes.mp4 is not a readable video container"
    assert runtime.catalog.get_video(job.video_id).error == job.error
    (record,) = [r for r in caplog.records if r.getMessage() == "video rejected"]
    assert "Invalid data found" in record.detail and str(fake.parent) in record.detail  # FFmpeg's words, for operators
    assert_untouched(runtime, good)


def test_an_mp4_cut_before_its_index_is_reported_truncated(runtime: Runtime, tmp_path: Path) -> None:
    """Index at the end (no faststart) and the file cut to 30 %: FFmpeg only says "invalid data";
    vidseek recognises the missing index and says the file is truncated or incomplete."""
    whole = write_frames(tmp_path / "whole.mp4", [i / 4 for i in range(80)])
    assert whole.read_bytes()[4:8] == b"ftyp" and whole.read_bytes().rfind(b"moov") > whole.read_bytes().find(b"mdat")
    cut = tmp_path / "media" / "cut.mp4"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.3)])
    job = ingest(runtime, cut)
    assert job.status is Status.failed and "cut.mp4 is truncated or incomplete" in job.error
    assert probe(whole).duration > 0  # the uncut file is fine
