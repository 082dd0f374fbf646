"""Search by example, end to end on SQLite and PostgreSQL: by a picture (``POST /api/search`` multipart,
``vidseek search --image``), by a picture and text blended, and by a stored moment ("more like this":
``{"like": ...}``, ``vidseek search --like-segment``); bad pictures and unknown moments are 4xx JSON.

The library: generated clips ingested with the tiny test model (TempMe, the default encoder): a blue
square (unique), green/yellow stripes, snow, and three_scenes (a red ball 0-12 s, the stripes 12-24 s,
snow 24-36 s), so a picture of stripes or snow has two videos to find, one of them at a moment inside.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from indexer.samples import HEIGHT, SAMPLES, WIDTH
from indexer.service import Runtime, build_runtime, image_encoder
from search.api import create_app
from search.catalog import embedding_from_bytes
from search.openapi import openapi_document
from search.query import QueryError, QueryService, SearchOptions, blend
from search.query_image import ImageRejected, decode_image, read_image
from search.rerank_service import RerankService
from search.settings import Settings
from tests.conftest import TINY_CONFIG_DIR, TINY_MODEL, temporary_database
from tests.test_cli import UNLOADABLE, vidseek
from tests.test_rerank_api import ingest

VIDEOS = ("blue_square", "stripes", "snow", "three_scenes")
MAX_IMAGE_BYTES = 2 << 20  # this library's VIDSEEK_MAX_IMAGE_BYTES
STRIPES_TEXT = "green and yellow stripes"


@dataclass
class Library:
    runtime: Runtime
    client: FlaskClient
    ids: dict[str, int]  # video name -> id

    def segments(self, name: str) -> dict[int, tuple[float, float, np.ndarray]]:
        """Segment id -> (start, end, stored embedding) of video ``name``."""
        return {s.id: (s.start, s.end, embedding_from_bytes(s.embedding))
                for s in self.runtime.catalog.segments_of(self.ids[name])}

    def segment_at(self, name: str, seconds: float) -> int:
        return next(sid for sid, (start, end, _) in self.segments(name).items() if start <= seconds < end)


def library_settings(folder: Path, samples_dir: Path, checkpoint: Path, database_url: str = "") -> Settings:
    return Settings(data_dir=folder / "data", database_url=database_url, media_roots=(samples_dir,), model=TINY_MODEL,
                    pretrained=str(checkpoint), model_config_dir=TINY_CONFIG_DIR, device="cpu", decode="exact",
                    precision="fp32", index_refresh_seconds=0.0, log_format="text", max_image_bytes=MAX_IMAGE_BYTES)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def library(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, samples_dir: Path,
            tiny_checkpoint: Path) -> Iterator[Library]:
    with ExitStack() as stack:
        url = "" if request.param == "sqlite" else stack.enter_context(temporary_database("vidseek_example"))
        runtime = build_runtime(library_settings(tmp_path_factory.mktemp(request.param), samples_dir, tiny_checkpoint, url))
        stack.callback(runtime.catalog.dispose)  # before the database is dropped
        ids = ingest(runtime, samples_dir, list(VIDEOS))
        yield Library(runtime, create_app(runtime.api_context()).test_client(), ids)


def frame(name: str, seconds: float) -> np.ndarray:
    """The frame the sample ``name`` shows at ``seconds``, RGB ``[240, 320, 3]``."""
    sample = next(s for s in SAMPLES if s.name == name)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    return sample.paint(seconds, yy, xx)


def picture(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def by_image(client: FlaskClient, data: bytes, name: str = "photo.png", **fields):
    form = {"image": (io.BytesIO(data), name), **{k: str(v) for k, v in fields.items()}}
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def ok(resp) -> dict:
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def error_of(resp, status: int) -> str:
    body = resp.get_json()
    assert resp.status_code == status, body
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    return body["error"]["message"]


def ranking(body: dict) -> list[int]:
    return [h["video_id"] for h in body["hits"]]


def moment_ids(body: dict) -> set[int]:
    return {h["segment_id"] for h in body["hits"]} | {m["segment_id"] for h in body["hits"] for m in h["moments"]}


def brute_force(library: Library, query: np.ndarray, exclude: int | None = None) -> list[tuple[int, float]]:
    """(video id, best segment cosine) best first, by numpy over the catalog's stored embeddings."""
    best = {}
    for name, vid in library.ids.items():
        scores = [float(v @ query) for sid, (_, _, v) in library.segments(name).items() if sid != exclude]
        if scores:
            best[vid] = max(scores)
    return sorted(best.items(), key=lambda p: -p[1])


def same_ranking(body: dict, expected: list[tuple[int, float]]) -> None:
    assert ranking(body) == [vid for vid, _ in expected]
    assert [h["first_stage_score"] for h in body["hits"]] == pytest.approx([s for _, s in expected], abs=1e-4)


# ----- a picture ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_picture_finds_the_video_it_was_taken_from(library: Library, fmt: str) -> None:
    options = {"quality": 95} if fmt != "PNG" else {}
    body = ok(by_image(library.client, picture(frame("blue_square", 1.0), fmt, **options), f"x.{fmt.lower()}"))
    assert body["query"] == "image" and body["rerank"]["method"] == "none"
    assert ranking(body)[0] == library.ids["blue_square"] and body["hits"][0]["first_stage_score"] > 0.99
    assert set(ranking(body)) == set(library.ids.values())  # every video is ranked, the picture's first
    assert body["timings_ms"]["encode"] > 0 and body["timings_ms"]["total"] >= body["timings_ms"]["encode"]


@pytest.mark.parametrize("scene, seconds, moment", [("stripes", 3.0, 15.0), ("snow", 5.0, 30.0)])
def test_a_picture_finds_the_moment_inside_a_longer_video(library: Library, scene: str, seconds: float, moment: float) -> None:
    """A frame of stripes (snow) ranks the stripes (snow) clip and three_scenes first, the latter at its
    stripes (snow) segment, with the scores the stored embeddings give."""
    pixels = frame(scene, seconds)
    body = ok(by_image(library.client, picture(pixels)))
    assert set(ranking(body)[:2]) == {library.ids[scene], library.ids["three_scenes"]}
    three = next(h for h in body["hits"] if h["video_id"] == library.ids["three_scenes"])
    assert three["segment_id"] == library.segment_at("three_scenes", moment)
    same_ranking(body, brute_force(library, image_encoder(library.runtime.backbone)(pixels)))


def test_the_picture_is_prepared_as_ingestion_prepares_frames(library: Library) -> None:
    """A picture of a static clip's frame lands on that clip's segment embedding (which averages the
    encoded frames): the same resize, crop, normalisation, tower and precision."""
    (_, _, stored), = library.segments("blue_square").values()
    still = image_encoder(library.runtime.backbone)(frame("blue_square", 0.0))
    assert still.dtype == np.float32 and np.linalg.norm(still) == pytest.approx(1.0, abs=1e-5)
    assert float(still @ stored) > 0.99


def test_text_and_picture_blend_by_image_weight(library: Library) -> None:
    client, data = library.client, picture(frame("blue_square", 1.0))
    image_only = ok(by_image(client, data))
    text_only = ok(client.get("/api/search", query_string={"q": STRIPES_TEXT}))
    all_image = ok(by_image(client, data, q=STRIPES_TEXT, image_weight=1.0))
    all_text = ok(by_image(client, data, q=STRIPES_TEXT, image_weight=0.0))
    assert ranking(all_image) == ranking(image_only) and ranking(all_text) == ranking(text_only)
    assert [h["score"] for h in all_image["hits"]] == pytest.approx([h["score"] for h in image_only["hits"]], abs=1e-5)
    assert [h["score"] for h in all_text["hits"]] == pytest.approx([h["score"] for h in text_only["hits"]], abs=1e-5)
    assert all_image["query"] == f"{STRIPES_TEXT} + image (image_weight 1)"

    half = ok(by_image(client, data, q=STRIPES_TEXT))  # default weight 0.5
    assert half["query"] == f"{STRIPES_TEXT} + image (image_weight 0.5)"
    text = library.runtime.backbone.encode_text([STRIPES_TEXT])[0].numpy()
    image = image_encoder(library.runtime.backbone)(frame("blue_square", 1.0))
    expected = (text + image) / np.linalg.norm(text + image)
    same_ranking(half, brute_force(library, expected))
    assert blend(text, image, 0.5) == pytest.approx(expected, abs=1e-6)


def test_filters_paging_min_score_and_reranking_work_with_a_picture(library: Library) -> None:
    client, data, ids = library.client, picture(frame("stripes", 3.0)), library.ids
    full = ok(by_image(client, data, k=10))
    only = ok(by_image(client, data, video_ids=f"{ids['snow']},{ids['blue_square']}"))
    assert ranking(only) == [vid for vid in ranking(full) if vid in (ids["snow"], ids["blue_square"])]
    assert ranking(ok(by_image(client, data, k=2, offset=1))) == ranking(full)[1:3]
    close = ok(by_image(client, data, min_score=0.99))
    assert set(ranking(close)) == {ids["stripes"], ids["three_scenes"]}
    assert all(h["first_stage_score"] >= 0.99 for h in close["hits"])
    assert ok(by_image(client, data, max_duration=20))["hits"][0]["video_id"] == ids["stripes"]  # three_scenes is 36 s
    late = ok(by_image(client, data, rerank="late"))  # late interaction reads the query vector: a picture's will do
    assert late["rerank"]["method"] == "late" and not late["rerank"]["fallback"]
    message = error_of(by_image(client, data, rerank="llm"), 400)
    assert "rerank=llm reads the query text" in message
    for fields, words in (({"k": 0}, "k must be"), ({"offset": -1}, "offset must be"), ({"min_score": 2}, "min_score"),
                          ({"image_weight": 1.5}, "image_weight"), ({"image_weight": "half"}, "image_weight must be a number"),
                          ({"folder": "/etc"}, "outside"), ({"q": "x" * 1001}, "longer than")):
        assert words in error_of(by_image(client, data, **fields), 400), fields


# ----- a moment: more like this ---------------------------------------------------------------------
def test_more_like_a_moment_leaves_it_out_but_keeps_its_video(library: Library) -> None:
    source = library.segment_at("three_scenes", 15.0)  # its stripes
    body = ok(library.client.post("/api/search", json={"like": {"segment_id": source}, "k": 10}))
    assert body["query"] == f"like segment {source}"
    assert source not in moment_ids(body)
    assert ranking(body)[0] == library.ids["stripes"]  # the same scene in another video
    three = next(h for h in body["hits"] if h["video_id"] == library.ids["three_scenes"])  # its other moments remain
    assert three["segment_id"] in set(library.segments("three_scenes")) - {source}
    stored = library.segments("three_scenes")[source][2]
    same_ranking(body, brute_force(library, stored, exclude=source))

    by_time = ok(library.client.post("/api/search", json={"like": {"video_id": library.ids["three_scenes"], "t": 15.0}, "k": 10}))
    assert by_time["hits"] == body["hits"] and by_time["query"] == body["query"]
    late = ok(library.client.post("/api/search", json={"like": {"segment_id": source}, "rerank": "late"}))
    assert late["rerank"]["method"] == "late" and source not in moment_ids(late)
    filtered = ok(library.client.post("/api/search", json={"like": {"segment_id": source}, "video_ids": [library.ids["three_scenes"]]}))
    assert ranking(filtered) == [library.ids["three_scenes"]] and source not in moment_ids(filtered)


def test_a_one_segment_video_like_itself_is_not_returned(library: Library) -> None:
    (only,) = library.segments("blue_square")
    body = ok(library.client.post("/api/search", json={"like": {"segment_id": only}, "k": 10}))
    assert library.ids["blue_square"] not in ranking(body) and len(body["hits"]) == len(VIDEOS) - 1


@pytest.mark.parametrize(
    "like, status, words",
    [
        ({"segment_id": 10**12}, 404, "no segment 1000000000000"),
        ({"video_id": 10**12, "t": 1.0}, 404, "no video 1000000000000"),
        ({"video_id": "three_scenes", "t": 100.0}, 404, "has no segment at 100 s"),
        ({"segment_id": -1}, 400, "like.segment_id must be an integer"),
        ({"segment_id": 2**63}, 400, "like.segment_id must be an integer"),
        ({"segment_id": "3"}, 400, "like.segment_id must be an integer"),
        ({"video_id": 1}, 400, "like must be"),
        ({"video_id": 1, "t": "soon"}, 400, "t must be a number"),
        ({"video_id": "three_scenes", "t": -1}, 400, "t must be a non-negative"),
        ({"segment_id": 1, "t": 3}, 400, "like must be"),
        ([1], 400, "like must be"),
    ],
)
def test_unknown_or_malformed_moments_are_client_errors(library: Library, like, status: int, words: str) -> None:
    if isinstance(like, dict) and like.get("video_id") == "three_scenes":
        like = {**like, "video_id": library.ids["three_scenes"]}
    assert words in error_of(library.client.post("/api/search", json={"like": like}), status)


def test_like_and_q_together_or_llm_reranking_are_refused(library: Library) -> None:
    source = library.segment_at("three_scenes", 15.0)
    assert "not both" in error_of(library.client.post("/api/search", json={"like": {"segment_id": source}, "q": "x"}), 400)
    assert "reads the query text" in error_of(
        library.client.post("/api/search", json={"like": {"segment_id": source}, "rerank": "llm"}), 400)


def test_hybrid_mode_needs_the_words_of_a_query(library: Library) -> None:
    """Hybrid search matches the query's words against titles, file names and tags: a moment or a
    picture alone has none (400), a picture with a query is fused like a text query."""
    source = library.segment_at("three_scenes", 15.0)
    assert "mode=hybrid" in error_of(
        library.client.post("/api/search", json={"like": {"segment_id": source}, "mode": "hybrid"}), 400)
    data = picture(frame("blue_square", 1.0))
    assert "mode=hybrid" in error_of(by_image(library.client, data, mode="hybrid"), 400)
    both = ok(by_image(library.client, data, q="three scenes", mode="hybrid"))
    assert both["mode"] == "hybrid" and both["hits"][0]["title"] == "three_scenes"
    assert "text" in both["hits"][0]["signals"]


# ----- bad pictures -----------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels: a few KB that decode to side² pixels."""
    packer, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.compress(row * (side % 1000))
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body + packer.flush()) + _png_chunk(b"IEND", b"")


def test_bad_pictures_are_refused_with_the_reason(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    client, good = library.client, picture(frame("blue_square", 1.0))
    cases = [
        (b"", 400, "image is empty"),
        (b"just some text, not a picture\n" * 10, 400, "not a picture vidseek reads"),
        (picture(frame("snow", 1.0), "GIF"), 400, "not a picture vidseek reads"),
        (good[: len(good) // 2], 400, "could not be decoded"),
        (picture(np.zeros((2, 40, 3), np.uint8)), 400, "sides may differ at most 16-fold"),
        (good + b"\0" * MAX_IMAGE_BYTES, 413, "larger than the 2 MiB limit (VIDSEEK_MAX_IMAGE_BYTES)"),
        (bomb_png(20_000), 413, "too many pixels"),  # Pillow's own refusal (over twice MAX_IMAGE_PIXELS)
        (bomb_png(10_000), 413, "10000x10000 pixels, more than the"),  # where Pillow would only warn
    ]
    for data, status, words in cases:
        assert words in error_of(by_image(client, data), status), words
    huge = by_image(client, b"\0" * (MAX_IMAGE_BYTES + (1 << 20)))  # refused while the body is read
    assert "request body is larger than" in error_of(huge, 413)
    assert "needs an 'image' file" in error_of(client.post("/api/search", data={"q": "x"}, content_type="multipart/form-data"), 400)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # honoured as set now
    assert "320x240 pixels, more than the 50000 allowed" in error_of(by_image(client, good), 413)


def test_pictures_are_decoded_upright_and_in_eight_bits() -> None:
    """EXIF orientation is applied (a phone photo searches as it is seen); 16-bit grey is scaled, not clipped."""
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    out = io.BytesIO()
    Image.fromarray(wide).save(out, "JPEG", exif=exif, quality=95)
    upright = decode_image(out.getvalue(), MAX_IMAGE_BYTES)
    assert upright.shape == (40, 20, 3) and upright[:18, :, 0].mean() > 200 and upright[22:, :, 0].mean() < 50
    grey = np.full((30, 30), 30000, np.uint16)
    out = io.BytesIO()
    Image.fromarray(grey).save(out, "PNG")
    assert decode_image(out.getvalue(), MAX_IMAGE_BYTES)[0, 0].tolist() == [117, 117, 117]  # 30000 >> 8
    with pytest.raises(ImageRejected, match="not a picture vidseek reads"):  # a PNG signature and nothing more
        decode_image(b"\x89PNG\r\n\x1a\n", MAX_IMAGE_BYTES)
    with pytest.raises(ImageRejected, match="is not a file"):
        read_image(Path("/no/such/photo.jpg"), MAX_IMAGE_BYTES)


def test_a_default_reranker_that_reads_text_is_skipped_and_says_why(library: Library) -> None:
    """With the llm reranker as the configured default, a search by a moment is not reranked, and the
    result says why; asked for by name it is refused. A service given no image encoder says it has none."""
    runtime = library.runtime
    service = QueryService(runtime.catalog, runtime.index, lambda q: np.zeros(4, np.float32),
                           reranking=RerankService({}, "llm", 5))
    like = service.like_query(library.segment_at("snow", 1.0))
    result = service.search_vector(like, SearchOptions(k=3))
    assert (result.rerank.method, result.rerank.fallback) == ("llm", True) and "reads the query text" in result.rerank.reason
    assert [h.video_id for h in result.hits] == [h.video_id for h in service.search_vector(like, SearchOptions(k=3, rerank="none")).hits]
    with pytest.raises(QueryError, match="reads the query text"):
        service.search_vector(like, SearchOptions(k=3, rerank="llm"))
    with pytest.raises(QueryError, match="does not search by image"):
        service.image_query(frame("snow", 1.0))


# ----- the API document ---------------------------------------------------------------------------------
def test_the_openapi_document_describes_both_new_shapes() -> None:
    doc = openapi_document("0")
    post = doc["paths"]["/api/search"]["post"]
    content = post["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["$ref"] == "#/components/schemas/ImageSearchRequest"
    assert {"404", "413"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    assert schemas["ImageSearchRequest"]["properties"]["image"]["format"] == "binary"
    assert {"image_weight", "q", "k", "rerank", "video_ids"} <= set(schemas["ImageSearchRequest"]["properties"])
    assert schemas["SearchRequest"]["properties"]["like"]["$ref"] == "#/components/schemas/Like"
    assert [sorted(s["required"]) for s in schemas["Like"]["oneOf"]] == [["segment_id"], ["t", "video_id"]]


# ----- the command line ------------------------------------------------------------------------------------
@pytest.fixture()
def cli_library(settings: Settings, samples_dir: Path) -> tuple[Settings, dict[str, int], Runtime]:
    runtime = build_runtime(settings)
    return settings, ingest(runtime, samples_dir, list(VIDEOS)), runtime


def test_cli_searches_by_picture_and_by_moment(cli_library, tmp_path: Path) -> None:
    settings, ids, runtime = cli_library
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(picture(frame("blue_square", 1.0), "JPEG", quality=95))
    result = vidseek(settings, "search", "--image", str(photo), "-k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "blue_square" in lines[0] and lines[-1].startswith("(image; ")

    source = next(s.id for s in runtime.catalog.segments_of(ids["three_scenes"]) if s.start <= 15.0 < s.end)
    result = vidseek(settings, "search", "--like-segment", str(source))
    assert result.returncode == 0, result.stderr
    assert "stripes" in result.stdout.splitlines()[0] and f"segment {source}\n" not in result.stdout
    assert "three_scenes" in result.stdout and f"(like segment {source}; " in result.stdout

    result = vidseek(settings, "search", "stripes", "--image", str(photo), "--image-weight", "1")
    assert result.returncode == 0 and "blue_square" in result.stdout.splitlines()[0]
    assert "(stripes + image (image_weight 1); " in result.stdout
    missing = vidseek(settings, "search", "--like-segment", "999999")
    assert missing.returncode == 1 and "error: no segment 999999" in missing.stderr


def test_cli_refuses_bad_example_arguments_before_the_model_loads(settings: Settings, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    for args, reason in (
        (["search", "--image", str(text)], "not a picture vidseek reads"),
        (["search", "snow", "--like-segment", "3"], "--like-segment searches with a stored moment alone"),
        (["search"], "query is empty"),
    ):
        result = vidseek(settings, *args, env=UNLOADABLE)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and reason in result.stderr, (args, result.stderr)
        assert "weights" not in result.stderr  # the model was never loaded
