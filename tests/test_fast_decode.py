"""Fast decoding (non-reference frames and deblocking skipped) against exact decoding, its
fallbacks, and hardware decoding's software fallback (no GPU here: only the fallback runs)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import av
from av.video.frame import PictureType
import numpy as np
import pytest
import torch

from indexer.decode import (
    FAST_MIN_FRAMES_PER_SAMPLE,
    DecodeError,
    DecodePlan,
    center_crop,
    decode_plans,
    iter_sampled_frames,
    probe,
    sample_times,
)
from indexer.samples import write_video
from indexer.service import build_runtime
from search.catalog import embedding_from_bytes
from search.settings import Settings
from search.tables import Status

FPS = 30
MAX_FRAMES_FROM_INSTANT = 3  # the issue's bound; x264's pyramid B-frames give 1


BARCODE_BITS = 10  # horizontal bands in the middle columns: frame number i in binary, bit b in band b
BARCODE_COLUMNS = slice(64, 96)  # inside any centre crop of the 160x120 clip


def _moving(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Gradients that pan (motion for the encoder's B-frames) around a black/white barcode of the
    frame's number, which survives lossy coding and resizing: the picture says which frame it is."""
    img = np.zeros(yy.shape + (3,), np.uint8)
    img[..., 0] = (xx + 40 * t) % 256
    img[..., 1] = (2 * yy + 10 * t) % 256
    img[..., 2] = 128
    bits = (round(t * FPS) >> (yy[:, 0].astype(int) * BARCODE_BITS // len(yy))) & 1
    img[:, BARCODE_COLUMNS] = (255 * bits)[:, None, None]
    return img


def _frame_number(image: np.ndarray) -> int:
    """The number the barcode of ``_moving`` shows in ``image`` ``[H, W, 3]`` (any resize of a frame)."""
    height, width = image.shape[:2]
    column = image[:, width // 2].mean(axis=-1)  # the middle column runs through every band
    centres = ((np.arange(BARCODE_BITS) + 0.5) * height / BARCODE_BITS).astype(int)
    return sum(int(column[y] > 128) << b for b, y in enumerate(centres))


@pytest.fixture(scope="module")
def bframes_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of H.264 at 30 fps (x264 veryfast: pyramid B-frames), 160x120."""
    return write_video(tmp_path_factory.mktemp("fast") / "bframes.mp4", _moving, 10, fps=FPS, size=(160, 120))


def _picture_types(path: Path) -> str:
    with av.open(str(path)) as container:
        return "".join(PictureType(frame.pict_type).name for frame in container.decode(video=0))


def _error(path: Path, mode: str) -> str:
    with pytest.raises(DecodeError) as caught:
        list(iter_sampled_frames(path, 1.0, mode=mode))
    return str(caught.value)


def test_the_clip_has_b_frames(bframes_clip: Path) -> None:
    assert "B" in _picture_types(bframes_clip)


def test_fast_samples_are_monotonic_close_to_their_instants_and_as_many_as_exact(bframes_clip: Path) -> None:
    info = probe(bframes_clip)
    instants = sample_times(info.duration, 1.0, 3600)
    exact = list(iter_sampled_frames(bframes_clip, 1.0, info=info, mode="exact"))
    fast = list(iter_sampled_frames(bframes_clip, 1.0, info=info, mode="fast"))
    assert len(fast) == len(exact) == len(instants) == 10
    assert [f.time for f in exact] == pytest.approx(instants.tolist())
    times = np.array([f.time for f in fast])
    assert (np.diff(times) > 0).all() and [f.index for f in fast] == list(range(10))
    lag = (instants - times) * FPS  # source frame periods between an instant and its sample
    assert (lag >= -1e-6).all() and lag.max() <= MAX_FRAMES_FROM_INSTANT + 1e-6
    assert lag.max() >= 1 - 1e-6, "fast decoding skipped no frame that a sample would have used"
    for f, e in zip(fast, exact):  # the picture is the frame of the sample's own timestamp, resized alike
        assert f.image.shape == e.image.shape
        assert _frame_number(f.image) == round(f.time * FPS)
        assert _frame_number(e.image) == round(e.time * FPS)


def test_fast_only_when_the_interval_spans_more_than_a_few_frames(bframes_clip: Path) -> None:
    info = probe(bframes_clip)
    assert decode_plans(info, 1.0, "fast") == [DecodePlan(skip=True), DecodePlan(skip=False)]
    assert decode_plans(info, FPS / FAST_MIN_FRAMES_PER_SAMPLE, "fast") == [DecodePlan(skip=False)]
    assert decode_plans(info, 1.0, "exact") == [DecodePlan(skip=False)]
    with pytest.raises(ValueError, match="decode mode"):
        decode_plans(info, 1.0, "quick")


def test_truncated_file_fails_with_the_same_message_in_both_modes(bframes_clip: Path, tmp_path: Path) -> None:
    """Index (moov) at the end, cut off: refused when opened, before any decoding."""
    data = bframes_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert _error(cut, "fast") == _error(cut, "exact")


def test_truncated_file_with_index_first_fails_alike(tmp_path: Path, caplog) -> None:
    """moov before mdat: the headers survive, the frames stop early. Fast decoding notices, and the
    exact decoder, run as the fallback, reports it -- so the message is the same in both modes."""
    src = tmp_path / "fast.mp4"
    with av.open(str(src), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(20 * FPS):
            img = np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cut = tmp_path / "fast_cut.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    message = _error(cut, "exact")
    assert "truncated" in message
    with caplog.at_level(logging.WARNING, logger="indexer.decode"):
        assert _error(cut, "fast") == message
    assert "software fast decoding of fast_cut.mp4 failed" in caplog.text
    assert "falling back to software exact decoding" in caplog.text


def test_corrupt_file_fails_with_the_same_message_in_both_modes(bframes_clip: Path, tmp_path: Path) -> None:
    data = bytearray(bframes_clip.read_bytes())
    garbage = np.random.default_rng(0).integers(0, 256, len(data) // 5, dtype=np.uint8).tobytes()
    start = len(data) // 5
    data[start : start + len(garbage)] = garbage
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(bytes(data))
    assert _error(bad, "fast") == _error(bad, "exact")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine decodes on the GPU instead")
def test_hardware_decoding_falls_back_to_software_with_a_log_line(bframes_clip: Path, caplog) -> None:
    """No CUDA device here: the NVDEC attempt fails and the software decoder gives the same samples."""
    info = probe(bframes_clip)
    assert decode_plans(info, 1.0, "fast", hardware=True)[0] == DecodePlan(skip=True, hardware=True)
    software = list(iter_sampled_frames(bframes_clip, 1.0, info=info, mode="fast"))
    with caplog.at_level(logging.WARNING, logger="indexer.decode"):
        hardware = list(iter_sampled_frames(bframes_clip, 1.0, info=info, mode="fast", hardware=True))
    assert "hardware fast decoding of bframes.mp4 failed" in caplog.text
    assert "falling back to software fast decoding" in caplog.text
    assert [f.time for f in hardware] == [f.time for f in software]
    assert all(np.array_equal(h.image, s.image) for h, s in zip(hardware, software))


def test_ingestion_decodes_fast_by_default_and_encodes_the_frames_it_sampled(settings: Settings, samples_dir: Path) -> None:
    """End to end with ``VIDSEEK_DECODE`` unset (fast): each segment starts within 3 source frames
    before its instant, and its embedding is the encoder's over the fast-decoded frames."""
    assert Settings().decode == "fast"
    runtime = build_runtime(replace(settings, decode=Settings().decode))
    path = samples_dir / "three_scenes.mp4"  # 12 fps, pyramid B-frames
    job = runtime.catalog.create_job(path)
    assert runtime.ingestor().run_job(job.id) is Status.done
    video = runtime.catalog.get_video(runtime.catalog.get_job(job.id).video_id)
    segments = runtime.catalog.segments_of(video.id)
    assert video.frames_sampled == 36 and [s.frame_count for s in segments] == [12, 12, 12]
    starts = np.array([s.start for s in segments])
    assert ((np.array([0.0, 12.0, 24.0]) - starts) * video.fps <= MAX_FRAMES_FROM_INSTANT + 1e-6).all()
    assert segments[-1].end == pytest.approx(36.0, abs=0.1)

    size = runtime.backbone.image_size
    frames = [f for f in iter_sampled_frames(path, 1.0, short_side=size, mode="fast") if f.time >= starts[1]][:12]
    assert frames[0].time == starts[1]
    pixels = runtime.backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in frames]))
    expected = runtime.encoder.encode(pixels[None]).embeddings[0].numpy()
    np.testing.assert_allclose(embedding_from_bytes(segments[1].embedding), expected, atol=1e-5)
