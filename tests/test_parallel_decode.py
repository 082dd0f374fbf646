"""Decoding one video on several decoders side by side, over spans cut at keyframes
(``indexer.parallel_decode``): the same samples as one pass, bounded threads, the same errors."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import av
import numpy as np
import pytest

import indexer.decode as decode
from indexer.decode import DecodePlan, DecodeStats, decode_plans, iter_sampled_frames, probe, sample_times
from indexer.keyframes import Keyframes, read_keyframes
from indexer.parallel_decode import DecodeSpan, plan_spans
from tests.test_fast_decode import FPS, _error, _frame_number, _moving

KEYFRAME_EVERY = 45  # source frames (1.5 s)


def _clip(path: Path, seconds: float, container_format: str | None = None) -> Path:
    """H.264 with pyramid B-frames, a keyframe every 1.5 s, showing its frame numbers as barcodes."""
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=FPS, options={
            "preset": "veryfast", "x264-params": f"keyint={KEYFRAME_EVERY}:min-keyint={KEYFRAME_EVERY}:scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(_moving(i / FPS, yy, xx), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip(tmp_path_factory.mktemp("spans") / "gops.mp4", 20)


def _span_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("vidseek-span")]


def test_spans_start_at_a_keyframe_at_or_before_their_first_instant() -> None:
    times = np.arange(40) / 2.0  # 2 samples a second for 20 s
    pts = np.arange(0, 20 * 1000, 1500)  # a keyframe every 1.5 s, time base 1/1000
    spans = plan_spans(times, Keyframes(pts, pts / 1000.0), min_samples=8)
    assert spans[0].keyframe_pts is None and spans[0].first == 0 and spans[-1].stop == len(times)
    assert [s.last for s in spans] == [False] * (len(spans) - 1) + [True]
    for before, after in zip(spans, spans[1:]):
        assert before.stop == after.first and before.stop - before.first >= 8
        assert after.keyframe_pts / 1000.0 <= times[after.first] + 1e-6
        assert times[after.first - 1] < after.keyframe_pts / 1000.0  # the earlier span's instants come before it
    assert [(s.first, s.stop) for s in spans] == [(0, 9), (9, 18), (18, 27), (27, 36), (36, 40)]  # the last may be short
    assert plan_spans(times, Keyframes(pts[:1], pts[:1] / 1000.0)) == [DecodeSpan(None, 0, 40, True)]  # one keyframe: one span


def test_a_jump_goes_to_the_last_keyframe_before_the_next_instant_when_it_skips_enough() -> None:
    pts = np.arange(0, 20 * 1000, 1500)  # a keyframe every 1.5 s, time base 1/1000
    found = Keyframes(pts, pts / 1000.0)
    assert found.jump_target(1.04, 2.0, min_skip=0.2) == 1500  # the frames 1.04 .. 1.5 s show at no later instant
    assert found.jump_target(1.04, 3.0, min_skip=0.2) == 3000  # an instant on a keyframe: that keyframe
    assert found.jump_target(1.04, 1.4, min_skip=0.2) is None  # no keyframe after the position before the instant
    assert found.jump_target(1.40, 2.0, min_skip=0.2) is None  # 0.1 s ahead: not worth a seek
    assert found.jump_target(0.5, 1.0, min_skip=0.2) is None  # the keyframe before the instant is behind the position


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_decoding_jumps_over_frames_no_sample_needs(gop_clip: Path, workers: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1 sample/s with a keyframe every 1.5 s, after each sample the decoder seeks to the keyframe
    before the next instant: the very same samples as decoding on, from far fewer decoded frames."""
    info = probe(gop_clip)
    jumping, reading_on = DecodeStats(), DecodeStats()
    jumped = list(iter_sampled_frames(gop_clip, 1.0, info=info, mode="fast", workers=workers, stats=jumping))
    monkeypatch.setattr(decode, "JUMP_MIN_FRAMES", 10**9)
    read_on = list(iter_sampled_frames(gop_clip, 1.0, info=info, mode="fast", workers=workers, stats=reading_on))
    assert len(jumped) == len(read_on) == 20
    assert [(f.index, f.time) for f in jumped] == [(f.index, f.time) for f in read_on]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(jumped, read_on))
    assert [_frame_number(f.image) for f in jumped] == [round(f.time * FPS) for f in jumped]
    assert jumping.seeks >= 8 and jumping.frames < 0.75 * reading_on.frames
    spans = plan_spans(sample_times(info.duration, 1.0, 3600), read_keyframes(gop_clip))
    assert reading_on.seeks == (0 if workers == 1 else len(spans) - 1)  # without jumps: only each later span's own seek


def test_a_jump_that_lands_late_falls_back_to_exact_decoding(gop_clip: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog) -> None:
    """A jump landing past the next instant would miss that instant's frame: the attempt is dropped
    (logged) and exact decoding resumes after the samples already given."""
    info = probe(gop_clip)
    real = Keyframes.jump_target
    monkeypatch.setattr(Keyframes, "jump_target", lambda self, position, instant, min_skip:
                        real(self, position, instant + 1.5, min_skip))  # the keyframe after the instant's
    with caplog.at_level(logging.WARNING, logger="indexer.decode"):
        frames = list(iter_sampled_frames(gop_clip, 1.0, info=info, mode="fast"))
    assert "software fast decoding of gops.mp4 failed (seeking for 1.000s landed on a frame at 1.500s)" in caplog.text
    assert [f.index for f in frames] == list(range(20)) and np.all(np.diff([f.time for f in frames]) > 0)
    assert [_frame_number(f.image) for f in frames] == [round(f.time * FPS) for f in frames]


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_two_decoders_give_exactly_the_samples_of_one_pass(gop_clip: Path, mode: str) -> None:
    info = probe(gop_clip)
    found = read_keyframes(gop_clip)
    assert found is not None and np.allclose(np.diff(found.seconds), KEYFRAME_EVERY / FPS)
    assert len(plan_spans(sample_times(info.duration, 2.0, 3600), found)) >= 3
    assert decode_plans(info, 2.0, mode, workers=2)[0] == DecodePlan(skip=mode == "fast", workers=2)
    one = list(iter_sampled_frames(gop_clip, 2.0, info=info, mode=mode))
    two = list(iter_sampled_frames(gop_clip, 2.0, info=info, mode=mode, workers=2))
    assert len(two) == len(one) == 40
    assert [(f.index, f.time) for f in two] == [(f.index, f.time) for f in one]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, two))
    assert [_frame_number(f.image) for f in two] == [round(f.time * FPS) for f in two]
    assert not _span_threads()


def test_leaving_early_stops_every_decoder(gop_clip: Path) -> None:
    frames = iter_sampled_frames(gop_clip, 2.0, mode="fast", workers=2)
    assert next(frames).index == 0 and _span_threads()
    frames.close()
    assert not _span_threads()


def test_a_seek_that_lands_late_falls_back_to_one_pass(gop_clip: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """A span whose seek lands after its first instant would miss that instant's frame: the attempt is
    dropped (logged) and the file decoded in one pass, resuming after the samples already given."""
    info = probe(gop_clip)
    one = list(iter_sampled_frames(gop_clip, 2.0, info=info, mode="fast"))
    real = plan_spans

    def late(*args, **kwargs):  # type: ignore[no-untyped-def]
        spans = real(*args, **kwargs)
        return [spans[0], DecodeSpan(spans[2].keyframe_pts, spans[1].first, spans[1].stop, False), *spans[2:]]

    monkeypatch.setattr(decode, "plan_spans", late)
    with caplog.at_level(logging.WARNING, logger="indexer.decode"):
        two = list(iter_sampled_frames(gop_clip, 2.0, info=info, mode="fast", workers=2))
    assert "software fast decoding on 2 decoders of gops.mp4 failed" in caplog.text
    assert [(f.index, f.time) for f in two] == [(f.index, f.time) for f in one]
    assert not _span_threads()


def test_bad_files_fail_with_the_same_message_on_two_decoders(gop_clip: Path, tmp_path: Path) -> None:
    data = bytearray(gop_clip.read_bytes())
    garbage = np.random.default_rng(0).integers(0, 256, len(data) // 5, dtype=np.uint8).tobytes()
    data[len(data) // 2: len(data) // 2 + len(garbage)] = garbage
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(bytes(data))
    exact = _error(bad, "exact")
    with pytest.raises(decode.DecodeError) as caught:
        list(iter_sampled_frames(bad, 1.0, mode="fast", workers=2))
    assert str(caught.value) == exact
    assert not _span_threads()


def test_containers_without_an_index_are_decoded_in_one_pass(tmp_path: Path) -> None:
    ts = _clip(tmp_path / "stream.ts", 6, container_format="mpegts")
    assert read_keyframes(ts) is None
    frames = list(iter_sampled_frames(ts, 2.0, mode="fast", workers=2))
    assert len(frames) == 12 and not _span_threads()
