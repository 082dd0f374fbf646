"""Ingestion end to end with the tiny model: catalog rows, bad inputs, duplicates, search round trip."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.decode import center_crop, iter_sampled_frames
from indexer.frames import batch_groups, group_frames
from indexer.segment_writer import THUMBNAIL_HEIGHT, save_thumbnail
from indexer.service import Runtime, build_runtime
from search.catalog import embedding_from_bytes
from search.query import QueryService
from search.settings import Settings
from search.tables import Status


@pytest.fixture()
def runtime(settings: Settings) -> Runtime:
    return build_runtime(settings)


def ingest(runtime: Runtime, path: Path) -> int:
    job = runtime.catalog.create_job(path)
    runtime.ingestor().run_job(job.id)
    return job.id


def segment_query(runtime: Runtime, path: Path, start: float, end: float) -> np.ndarray:
    """The embedding of the frames of ``path`` in [start, end): a query whose answer we know."""
    size = runtime.backbone.image_size
    frames = [f for f in iter_sampled_frames(path, 1.0, short_side=size) if start <= f.time < end]
    pixels = runtime.backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in frames]))
    return runtime.encoder.encode(pixels[None]).embeddings[0].numpy()


def test_grouping_into_segments_and_batches() -> None:
    groups = list(group_frames(range(30), 12))  # type: ignore[arg-type]  (any items group)
    assert [len(g.frames) for g in groups] == [12, 12, 6] and [g.ordinal for g in groups] == [0, 1, 2]
    batches = list(batch_groups(groups, 4))
    assert [[g.ordinal for g in b] for b in batches] == [[0, 1], [2]]  # equal frame counts per batch


def test_ingest_writes_segments_thumbnails_and_status(runtime: Runtime, samples_dir: Path) -> None:
    job_id = ingest(runtime, samples_dir / "three_scenes.mp4")
    job = runtime.catalog.get_job(job_id)
    assert job.status is Status.done and job.progress == 1.0 and job.attempts == 1
    video = runtime.catalog.get_video(job.video_id)
    assert video.status is Status.done and video.duration == pytest.approx(36.0, abs=0.1)
    assert (video.width, video.height, video.frames_sampled) == (320, 240, 36)
    segments = runtime.catalog.segments_of(video.id)
    assert [(s.start, s.end, s.frame_count) for s in segments] == [(0.0, 12.0, 12), (12.0, 24.0, 12), (24.0, 36.0, 12)]
    for s in segments:
        vec = embedding_from_bytes(s.embedding)
        assert vec.shape == (runtime.backbone.embed_dim,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
        assert (runtime.settings.thumbnail_dir / s.thumbnail).read_bytes()[:2] == b"\xff\xd8"  # JPEG


def test_segment_embedding_is_the_normalised_mean_of_frame_embeddings(settings: Settings, samples_dir: Path) -> None:
    """Full CLIP: the segment embedding is the re-normalised mean of independent frame embeddings."""
    runtime = build_runtime(settings.with_overrides(encoder="full"))
    path = samples_dir / "red_ball.mp4"
    ingest(runtime, path)
    size = runtime.backbone.image_size
    frames = np.stack([center_crop(f.image, size) for f in iter_sampled_frames(path, 1.0, short_side=size)])
    per_frame = runtime.backbone.encode_frames(runtime.backbone.pixels_from_frames(frames)).embeddings
    expected = torch.nn.functional.normalize(per_frame.mean(0), dim=0).numpy()
    (segment,) = runtime.catalog.segments_of(runtime.catalog.list_videos()[0][0].id)
    np.testing.assert_allclose(embedding_from_bytes(segment.embedding), expected, atol=1e-5)


def test_default_encoder_is_tempme_and_stores_its_segment_embedding(runtime: Runtime, samples_dir: Path) -> None:
    """TempMe (the default): the stored embedding is TempMe's over the segment's frames, which differs
    from full CLIP's (frames attend to each other from block 8 on) but stays close to it."""
    assert runtime.encoder.name == "tempme"
    path = samples_dir / "red_ball.mp4"
    ingest(runtime, path)
    size = runtime.backbone.image_size
    frames = np.stack([center_crop(f.image, size) for f in iter_sampled_frames(path, 1.0, short_side=size)])
    pixels = runtime.backbone.pixels_from_frames(frames)
    expected = runtime.encoder.encode(pixels[None]).embeddings[0].numpy()
    (segment,) = runtime.catalog.segments_of(runtime.catalog.list_videos()[0][0].id)
    stored = embedding_from_bytes(segment.embedding)
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    full = torch.nn.functional.normalize(runtime.backbone.encode_frames(pixels).embeddings.mean(0), dim=0).numpy()
    assert float(stored @ full) > 0.9 and np.abs(stored - full).max() > 1e-4


def test_duplicate_ingest_is_skipped(runtime: Runtime, samples_dir: Path, tmp_path: Path) -> None:
    first = runtime.catalog.get_job(ingest(runtime, samples_dir / "snow.mp4"))
    copy = tmp_path / "media" / "snow_copy.mp4"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((samples_dir / "snow.mp4").read_bytes())
    second = runtime.catalog.get_job(ingest(runtime, copy))
    assert second.status is Status.done and second.message == "already indexed"
    assert second.video_id == first.video_id
    assert runtime.catalog.count_segments() == 1


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.mp4", b"", "empty"),
        ("text.mp4", b"hello, I am a text file\n" * 100, "not a readable video"),
    ],
)
def test_bad_files_fail_with_reason_and_leave_the_rest_intact(
    runtime: Runtime, samples_dir: Path, tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    good = runtime.catalog.get_job(ingest(runtime, samples_dir / "stripes.mp4"))
    bad_path = tmp_path / "media" / name
    bad_path.parent.mkdir(parents=True)
    bad_path.write_bytes(content)
    bad = runtime.catalog.get_job(ingest(runtime, bad_path))
    assert bad.status is Status.failed and reason in bad.error
    bad_video = runtime.catalog.get_video(bad.video_id)
    assert bad_video.status is Status.failed and reason in bad_video.error
    assert runtime.catalog.get_video(good.video_id).status is Status.done
    assert runtime.catalog.count_segments() == 1


def test_truncated_video_fails_cleanly(runtime: Runtime, samples_dir: Path, tmp_path: Path) -> None:
    data = (samples_dir / "three_scenes.mp4").read_bytes()
    cut = tmp_path / "media" / "cut.mp4"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(data[: len(data) // 3])
    job = runtime.catalog.get_job(ingest(runtime, cut))
    assert job.status is Status.failed and job.error
    assert runtime.catalog.count_segments() == 0


def test_paths_outside_media_roots_are_refused(runtime: Runtime, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "v.mp4"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    job = runtime.catalog.get_job(ingest(runtime, outside))
    assert job.status is Status.failed and "outside the media roots" in job.error
    link = tmp_path / "media" / "escape.mp4"
    link.parent.mkdir()
    link.symlink_to(outside)
    job = runtime.catalog.get_job(ingest(runtime, link))
    assert job.status is Status.failed and "outside the media roots" in job.error


def test_search_round_trip_finds_each_video_and_the_moment(runtime: Runtime, samples_dir: Path) -> None:
    videos = sorted(samples_dir.glob("*.mp4"))
    for path in videos:
        ingest(runtime, path)
    # queries whose embeddings we control: the embedding of a known stretch of a known video
    queries = {f"q-{p.stem}": (p, 0.0, 1e9) for p in videos if p.stem != "three_scenes"}
    queries["q-stripes-moment"] = (samples_dir / "three_scenes.mp4", 12.0, 24.0)
    vectors = {q: segment_query(runtime, *spec) for q, spec in queries.items()}
    service = QueryService(runtime.catalog, runtime.index, lambda q: vectors[q], candidates=50)
    for q, (path, start, end) in queries.items():
        top = service.search(q, k=3).hits[0]
        assert top.title == path.stem, q
        assert top.score == pytest.approx(1.0, abs=1e-4)
        duration = runtime.catalog.get_video(top.video_id).duration
        assert (top.moment.start, top.moment.end) == (start, pytest.approx(min(end, duration)))
    moment = service.search("q-stripes-moment", k=6)
    three = next(h for h in moment.hits if h.title == "three_scenes")
    assert (three.moment.start, three.moment.end) == (12.0, 24.0)
    assert len(three.more) == 2  # the other two segments of that video, best first
    assert three.more[0].score >= three.more[1].score


def test_text_search_ranks_like_brute_force_cosine(runtime: Runtime, samples_dir: Path) -> None:
    for path in sorted(samples_dir.glob("*.mp4")):
        ingest(runtime, path)
    query = "a red ball rolling across a dark floor"
    result = runtime.queries.search(query, k=10)
    text = runtime.backbone.encode_text([query])[0].numpy()
    best: dict[int, float] = {}
    for video_id in {h.video_id for h in result.hits}:
        for s in runtime.catalog.segments_of(video_id):
            best[video_id] = max(best.get(video_id, -2.0), float(embedding_from_bytes(s.embedding) @ text))
    expected = sorted(best, key=best.get, reverse=True)
    assert [h.video_id for h in result.hits] == expected
    assert [h.score for h in result.hits] == pytest.approx([best[v] for v in expected], abs=1e-5)
    assert len(result.hits) == len(list(samples_dir.glob("*.mp4")))
    assert set(result.timings_ms) == {"encode", "search", "group", "total"}


def _still_then_moving(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """10 s of a still picture, then 6 s of a ball moving across it."""
    img = np.zeros(yy.shape + (3,), np.uint8)
    img[..., 1] = (xx * 0.6).astype(np.uint8)
    if t >= 10:
        cx = 40 + 40 * (t - 10)
        img[(xx - cx) ** 2 + (yy - 120) ** 2 < 30**2] = (230, 40, 40)
    return img


def test_static_frames_are_dropped_before_the_vit(settings: Settings, tmp_path: Path) -> None:
    from indexer.samples import write_video

    media = tmp_path / "media"
    path = write_video(media / "still.mp4", _still_then_moving, seconds=16)
    runtime = build_runtime(settings.with_overrides(encoder="full", frame_dedup=0.15, segment_frames=4))
    job = runtime.catalog.get_job(ingest(runtime, path))
    assert job.status is Status.done
    video = runtime.catalog.get_video(job.video_id)
    assert video.frames_sampled == 16
    segments = runtime.catalog.segments_of(video.id)
    encoded = sum(s.frame_count for s in segments)
    assert encoded <= 8, job.message  # the 10 still seconds collapse into one frame
    assert f"{encoded} of 16 frames encoded" in job.message
    assert segments[0].start == 0.0 and segments[-1].end == pytest.approx(16.0)
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))

    # the first segment's embedding is the frame embeddings weighted by how many frames each stands for
    size = runtime.backbone.image_size
    frames = list(iter_sampled_frames(path, 1.0, short_side=size))
    kept_times = [0.0] + [f.time for f in frames if f.time >= 10][: segments[0].frame_count - 1]
    kept = [f for f in frames if f.time in kept_times]
    pixels = runtime.backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in kept]))
    per_frame = runtime.backbone.encode_frames(pixels).embeddings
    weights = torch.tensor([10.0] + [1.0] * (len(kept) - 1))
    expected = torch.nn.functional.normalize((per_frame * weights[:, None]).sum(0), dim=0).numpy()
    np.testing.assert_allclose(embedding_from_bytes(segments[0].embedding), expected, atol=1e-5)


@pytest.mark.parametrize("method", ["holitom", "vqtoken"])
def test_ingestion_stores_a_compressed_summary(settings: Settings, samples_dir: Path, method: str) -> None:
    from models.summary import VideoSummary

    runtime = build_runtime(settings.with_overrides(summary=method, summary_chunk_frames=12))
    job = runtime.catalog.get_job(ingest(runtime, samples_dir / "three_scenes.mp4"))
    stored = runtime.catalog.summaries([job.video_id], runtime.ingestor().key)
    record = stored[job.video_id]
    summary = VideoSummary.from_bytes(record.data)
    assert record.method == summary.method == method and record.token_count == summary.num_tokens
    assert summary.frame_times.tolist() == [float(t) for t in range(36)]  # three 12-frame chunks, joined
    assert summary.tokens.shape[1] == runtime.backbone.width
    assert int(summary.frame_end.max()) == 35
    if method == "holitom":
        # VIDSEEK_SUMMARY_RETAIN (0.10) bounds each 12-frame chunk: floor(0.10 * 12 * 49) = 58 tokens
        assert summary.params["retain_ratio"] == 0.10
        assert summary.num_tokens <= 3 * 58
    else:
        assert summary.index_map.shape == (36, 49)
    runtime.catalog.delete_video(job.video_id)
    assert runtime.catalog.summaries([job.video_id], runtime.ingestor().key) == {}


def test_settings_space_key_matches_the_loaded_encoder(settings: Settings, tmp_path: Path) -> None:
    """The CLI computes the embedding space without loading the model; it must agree with the runtime."""
    from indexer.pipeline import embedding_key
    from indexer.service import load_encoder, settings_space_key
    from models.tempme import TempMeEncoder
    from tests.test_tempme import _checkpoint

    for encoder in ("full", "tempme"):
        s = settings.with_overrides(encoder=encoder)
        assert settings_space_key(s) == embedding_key(load_encoder(s))
    checkpoint = _checkpoint(load_encoder(settings).backbone, tmp_path / "tempme.pt", lora_b=0.0, position=0.0)
    s = settings.with_overrides(encoder="tempme", tempme_weights=checkpoint)
    encoder = load_encoder(s)
    assert isinstance(encoder, TempMeEncoder) and settings_space_key(s) == embedding_key(encoder)
    assert "+tempme-file-" in settings_space_key(s)


@pytest.mark.parametrize("height, width", [(4000, 16), (16, 4000), (720, 1280), (1080, 1080)])
def test_thumbnails_of_very_tall_or_wide_frames_keep_a_readable_middle(tmp_path: Path, height: int, width: int) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    dy, dx = max(2, height // 10), max(2, width // 10)
    image[height // 2 - dy : height // 2 + dy, width // 2 - dx : width // 2 + dx] = 255  # a mark in the middle
    save_thumbnail(image, tmp_path / "t.jpg")
    with Image.open(tmp_path / "t.jpg") as thumb:
        w, h = thumb.size
        assert max(w, h) / min(w, h) <= 3.05 and max(w, h) <= 4 * THUMBNAIL_HEIGHT and h <= THUMBNAIL_HEIGHT
        assert min(w, h) >= 5 and np.asarray(thumb.convert("L"))[h // 2, w // 2] > 100  # the middle is kept
    if height / width < 3 and width / height < 3:  # ordinary frames are scaled, not cropped
        assert abs(w / h - width / height) < 0.02
