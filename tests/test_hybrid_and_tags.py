"""Tags (``PATCH /api/videos/<id>``, ``vidseek tag``), the ``tags`` and ``ingested_*`` search filters and
hybrid search (full-text ranking of titles, file names and tags fused with the vector ranking by
reciprocal rank fusion), on SQLite and PostgreSQL: migration 0006 up and down, filters against a
brute-force answer over the catalog, the fusion against hand-computed scores, and the full-text
documents following title, tag, path and deletion changes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import inspect, select, text, update

from benchmarks.hybrid_bench import main as hybrid_bench
from indexer.service import build_runtime
from search.api import create_app
from search.api.context import ApiContext
from search.catalog import Catalog, SegmentRecord
from search.db import alembic_config, current_revision, upgrade
from search.filters import SearchFilters
from search.hybrid import HYBRID_DEPTH, RRF_K, Fused, reciprocal_rank_fusion
from search.query import QueryService
from search.settings import Settings
from search.tables import Video
from search.text_search import query_words, text_ranking_query
from tests.conftest import temporary_database
from tests.test_cli import vidseek
from tests.test_search_filters import KEY, Library, _unit, assert_same, brute_force, build_library, query_service, ranked

API_KEY = "tag-key"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
VOCABULARY = ("beach", "family", "drone", "night", "2024")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh catalog database for this module, on each database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('hybrid') / 'catalog.db'}"
        return
    with temporary_database("vidseek_hybrid") as url:
        yield url


@dataclass
class Tagged:
    """A synthetic library (``tests.test_search_filters.build_library``) whose videos were added a day
    apart from ``START`` and carry tags from ``VOCABULARY`` (video ``i`` has word ``j`` when bit ``j`` of
    ``i`` is set)."""

    lib: Library
    tags: dict[int, set[str]]  # video id -> tags
    added: dict[int, datetime]  # video id -> created_at (UTC)

    @property
    def catalog(self) -> Catalog:
        return self.lib.catalog

    def where(self, tags: set[str] = frozenset(), after: datetime | None = None, before: datetime | None = None) -> set[int]:
        """The videos a filter should let through, worked out in Python."""
        return {v for v in self.tags if tags <= self.tags[v] and (after is None or self.added[v] >= after)
                and (before is None or self.added[v] < before)}


@pytest.fixture(scope="module")
def tagged(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tagged]:
    root = tmp_path_factory.mktemp("media").resolve()
    lib = build_library(database_url, root, videos=64, per_video=4, seed=9)
    tags: dict[int, set[str]] = {}
    added: dict[int, datetime] = {}
    for i, video_id in enumerate(sorted(lib.folder)):
        tags[video_id] = {word for j, word in enumerate(VOCABULARY) if i >> j & 1}
        added[video_id] = START + timedelta(days=i, hours=i % 5)
        lib.catalog.set_metadata(video_id, tags=sorted(tags[video_id]))
        with lib.catalog.session() as s:
            s.execute(update(Video).where(Video.id == video_id).values(created_at=added[video_id]))
    yield Tagged(lib, tags, added)
    lib.catalog.dispose()


QUERIES = {name: v for name, v in zip(
    ("q0", "q1", "q2", "pelican crossing", "zebra stripes", "harbour lights", "quokka"),
    _unit(np.random.default_rng(21), 7))}


@pytest.fixture()
def service(tagged: Tagged, tmp_path: Path) -> QueryService:
    return query_service(tagged.lib, tmp_path / "idx", "flat", QUERIES)


def vector_order(tagged: Tagged, query: str) -> list[int]:
    """Every video, best first by its best segment's score for ``query`` (numpy)."""
    everyone = set(tagged.lib.folder)
    return [v for v, _ in brute_force(tagged.lib, QUERIES[query], everyone, len(everyone))]


# ----- migration ----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with temporary_database("vidseek_migration") as url:
        yield url


def _add_video(catalog: Catalog, path: str, content_hash: str) -> int:
    video = catalog.get_or_create_video(Path(path), content_hash, 1)
    catalog.replace_segments(video.id, [SegmentRecord(0, 0.0, 1.0, 1, None, np.ones(4, np.float32))], KEY)
    return video.id


def test_migration_0006_upgrades_and_downgrades(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0005")
    old = Catalog(url)
    with old.session() as s:  # a video written before tags existed
        s.execute(text("INSERT INTO videos (path, title, content_hash, size_bytes, status, embedding_key, frames_sampled, "
                       "created_at, updated_at) VALUES ('/m/x/sunset_harbour.mp4', 'sunset_harbour', :h, 1, 'done', :k, 0, "
                       "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"h": "a" * 64, "k": KEY})
        s.execute(text("INSERT INTO segments (video_id, ordinal, start, \"end\", frame_count, embedding_key, embedding) "
                       "SELECT id, 0, 0, 1, 1, :k, :e FROM videos"), {"k": KEY, "e": np.ones(4, np.float32).tobytes()})
    old.dispose()

    upgrade(url, "0006")
    assert current_revision(url) == "0006"
    catalog = Catalog(url)
    (video_id,) = [v.id for v in catalog.list_videos()[0]]
    assert catalog.text_ranking(["harbour"], None, KEY, 10) == [video_id]  # the existing video got its document
    assert catalog.set_metadata(video_id, tags=["boats"]) is not None
    assert catalog.text_ranking(["boats"], None, KEY, 10) == [video_id]
    inspector = inspect(catalog.engine)
    assert "video_tags" in inspector.get_table_names()
    assert {"ix_video_tags_tag"} <= {i["name"] for i in inspector.get_indexes("video_tags")}
    assert "ix_videos_created_at" in {i["name"] for i in inspector.get_indexes("videos")}

    command.downgrade(alembic_config(url), "0005")
    assert current_revision(url) == "0005"
    inspector = inspect(catalog.engine)
    columns = {c["name"] for c in inspector.get_columns("videos")}
    assert "video_tags" not in inspector.get_table_names() and "video_fts" not in inspector.get_table_names()
    assert not {"tag_words", "search_document"} & columns
    with catalog.engine.connect() as conn:  # the video and its segment are still there
        assert conn.execute(text("SELECT count(*) FROM segments WHERE video_id = :v"), {"v": video_id}).scalar_one() == 1
        if conn.dialect.name == "sqlite":
            assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")).scalar_one() == 0

    upgrade(url)  # and up again
    assert catalog.text_ranking(["sunset"], None, KEY, 10) == [video_id]
    assert catalog.tags_of([video_id]) == {}
    catalog.dispose()


def test_tag_filter_and_text_search_read_their_indexes(tagged: Tagged) -> None:
    """The tag filter reads the (tag, video_id) index and the text search the full-text index. On
    PostgreSQL, a 64-video table is cheaper to read whole, so sequential and plain index scans are
    switched off: the plan then shows which index the query can use at all."""
    engine = tagged.catalog.engine
    tagged_videos = select(Video.id).where(*SearchFilters(tags=("beach", "drone")).clauses())
    by_text = text_ranking_query(engine.dialect.name, ["pelican"], None, KEY, 10)  # a rare word
    explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN"
    plans = []
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_indexscan = off")  # a GIN index is read by bitmap scans only
        for statement in (tagged_videos, by_text):
            compiled = statement.compile(engine, compile_kwargs={"render_postcompile": True})
            params = (tuple(compiled.params[name] for name in compiled.positiontup) if compiled.positional
                      else compiled.params)
            plans.append(" ".join(str(row[-1]) for row in conn.exec_driver_sql(f"{explain} {compiled}", params)))
    assert "ix_video_tags_tag" in plans[0], plans[0]
    text_index = "VIRTUAL TABLE INDEX" if engine.dialect.name == "sqlite" else "ix_videos_search_document"
    assert text_index in plans[1], plans[1]


# ----- filters --------------------------------------------------------------------------------------
def test_tag_and_ingested_filters_are_the_brute_force_answer(tagged: Tagged, service: QueryService) -> None:
    lib = tagged.lib
    plus_two = timezone(timedelta(hours=2))
    cases = [
        (SearchFilters(tags=("beach",)), tagged.where({"beach"})),
        (SearchFilters(tags=("Beach", " DRONE ")), tagged.where({"beach", "drone"})),  # all of them, normalised
        (SearchFilters(tags=("beach", "family", "drone", "night")), tagged.where({"beach", "family", "drone", "night"})),
        (SearchFilters(tags=("no such tag",)), set()),
        (SearchFilters(ingested_after=START + timedelta(days=40)), tagged.where(after=START + timedelta(days=40))),
        (SearchFilters(ingested_before=START + timedelta(days=9, hours=2)),
         tagged.where(before=START + timedelta(days=9, hours=2))),
        # naive means UTC; an offset is honoured: 12:00+02:00 is 10:00 UTC
        (SearchFilters(ingested_after=datetime(2026, 1, 20), ingested_before=datetime(2026, 2, 10, 12, tzinfo=plus_two)),
         tagged.where(after=datetime(2026, 1, 20, tzinfo=timezone.utc),
                      before=datetime(2026, 2, 10, 10, tzinfo=timezone.utc))),
        (SearchFilters(tags=("night",), ingested_after=START + timedelta(days=30), min_duration=5),
         {v for v in tagged.where({"night"}, after=START + timedelta(days=30)) if lib.duration[v] >= 5}),
    ]
    for filters, allowed in cases:
        assert filters.active
        for name in ("q0", "q1"):
            got = service.search(name, 10, filters=filters)
            want = brute_force(lib, QUERIES[name], allowed, 10)
            assert_same(ranked(got), want)
            assert len(got.hits) == min(10, len(allowed))  # a selective filter still fills k


def test_the_api_filters_by_tags_and_ingestion_time(tagged: Tagged, client: FlaskClient) -> None:
    allowed = tagged.where({"beach", "night"}, after=START + timedelta(days=3), before=START + timedelta(days=50))
    want = [v for v, _ in brute_force(tagged.lib, QUERIES["q2"], allowed, 5)]
    got = client.get("/api/search?q=q2&k=5&tags=beach,NIGHT&ingested_after=2026-01-04&"
                     "ingested_before=2026-02-20T01:00:00%2B01:00")  # 2026-02-20 00:00 UTC: day 50
    assert got.status_code == 200, got.get_json()
    assert [h["video_id"] for h in got.get_json()["hits"]] == want
    posted = client.post("/api/search", json={"q": "q2", "k": 5, "tags": ["beach", "night"],
                                              "ingested_after": "2026-01-04T00:00:00Z",
                                              "ingested_before": "2026-02-20T00:00:00"})
    assert [h["video_id"] for h in posted.get_json()["hits"]] == want


# ----- PATCH /api/videos/<id> -----------------------------------------------------------------------
@pytest.fixture()
def client(tagged: Tagged, service: QueryService, tmp_path: Path) -> FlaskClient:
    settings = Settings(data_dir=tmp_path / "data", media_roots=(tagged.lib.root,), log_format="text", api_key=API_KEY)
    return create_app(ApiContext(settings, tagged.catalog, service.index, service)).test_client()


def patch(client: FlaskClient, video_id: int, body: object, key: str | None = API_KEY):
    return client.patch(f"/api/videos/{video_id}", json=body, headers={"X-API-Key": key} if key else {})


def test_patch_sets_title_and_tags(tagged: Tagged, client: FlaskClient) -> None:
    video_id = sorted(tagged.tags)[-1]
    before = client.get(f"/api/videos/{video_id}").get_json()
    try:
        resp = patch(client, video_id, {"title": "  Lighthouse at dusk ", "tags": [" Sea  Side", "sea side", "Boats"]})
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["title"] == "Lighthouse at dusk" and body["tags"] == ["boats", "sea side"]
        assert len(body["segments"]) == 4  # answered like GET
        assert body["updated_at"] == before["updated_at"]  # still when ingestion wrote it (the page's "indexed")
        assert client.get(f"/api/videos/{video_id}").get_json() == body
        listed = next(v for v in client.get("/api/videos?limit=500").get_json()["videos"] if v["id"] == video_id)
        assert listed["tags"] == ["boats", "sea side"] and listed["title"] == "Lighthouse at dusk"

        only_tags = patch(client, video_id, {"tags": []}).get_json()  # the title stays
        assert only_tags["tags"] == [] and only_tags["title"] == "Lighthouse at dusk"
        assert tagged.catalog.tags_of([video_id]) == {}
    finally:
        tagged.catalog.set_metadata(video_id, before["title"], before["tags"])


def test_patch_needs_the_key_and_an_existing_video(tagged: Tagged, client: FlaskClient) -> None:
    video_id = min(tagged.tags)
    for key in (None, "wrong"):
        resp = patch(client, video_id, {"tags": ["x"]}, key=key)
        assert resp.status_code == 401 and "API key" in resp.get_json()["error"]["message"]
    assert tagged.catalog.tags_of([video_id]).get(video_id, []) == sorted(tagged.tags[video_id])  # nothing changed
    resp = patch(client, 987654321, {"tags": ["x"]})
    assert resp.status_code == 404 and resp.get_json()["error"]["message"] == "no video 987654321"


@pytest.mark.parametrize("body, message", [
    (None, "send a JSON object"),
    ({}, "send a JSON object"),
    (["beach"], "send a JSON object"),
    ({"tag": ["beach"]}, "unknown field 'tag'"),
    ({"title": ""}, "title must have 1 to 512 characters"),
    ({"title": "   "}, "title must have 1 to 512 characters"),
    ({"title": "x" * 513}, "title must have 1 to 512 characters"),
    ({"title": None}, "title must be a string"),
    ({"title": "a\x00b"}, "title must not contain control characters"),
    ({"title": "\ud800"}, "title must not contain control characters"),
    ({"tags": "beach"}, "tags must be a list of strings"),
    ({"tags": [3]}, "tags must be strings"),
    ({"tags": [""]}, "a tag must have 1 to 40 characters"),
    ({"tags": ["x" * 41]}, "a tag must have 1 to 40 characters"),
    ({"tags": ["a,b"]}, "must not contain commas"),
    ({"tags": ["a\tb\x07"]}, "control characters"),
    ({"tags": [f"t{i}" for i in range(21)]}, "at most 20 tags"),
])
def test_patch_refuses_bad_bodies(tagged: Tagged, client: FlaskClient, body: object, message: str) -> None:
    video_id = min(tagged.tags)
    resp = patch(client, video_id, body)
    assert resp.status_code == 400 and message in resp.get_json()["error"]["message"]
    video = tagged.catalog.get_video(video_id)
    assert video.title == "v0" and tagged.catalog.tags_of([video_id]).get(video_id, []) == sorted(tagged.tags[video_id])


def test_twenty_tags_and_forty_characters_fit(tagged: Tagged, client: FlaskClient) -> None:
    video_id = min(tagged.tags)
    tags = [f"{i:02d}" + "é" * 38 for i in range(20)]
    try:
        assert patch(client, video_id, {"tags": tags}).get_json()["tags"] == tags
    finally:
        tagged.catalog.set_metadata(video_id, tags=sorted(tagged.tags[video_id]))


# ----- hybrid search --------------------------------------------------------------------------------
def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion({"vector": [1, 2, 3], "text": [3, 4, 1]})
    assert [vid for vid, _ in fused] == [1, 3, 2, 4]  # 1 and 3 tie (1/61 + 1/63): vector rank first; so do 2 and 4
    scores = {vid: f.score for vid, f in fused}
    assert scores[1] == pytest.approx(1 / 61 + 1 / 63) and scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[2] == pytest.approx(1 / 62) and scores[4] == pytest.approx(1 / 62)
    assert dict(fused)[3] == Fused(scores[3], {"vector": 3, "text": 1}) and dict(fused)[4].signals == ["text"]
    assert RRF_K == 60 and [v for v, _ in reciprocal_rank_fusion({"vector": [5, 6]}, k=1)] == [5, 6]


def test_query_words() -> None:
    assert query_words("A dog, the DOGS and a café_au-lait 2024!") == ["dog", "dogs", "café", "au", "lait", "2024"]
    assert query_words("the a of") == [] and len(query_words(" ".join(f"w{i}" for i in range(50)))) == 32


@pytest.fixture()
def titled(tagged: Tagged) -> Iterator[dict[str, int]]:
    """Titles for the hybrid tests: ``worst`` (the video ranked last by vector for "pelican crossing") is
    titled "Pelican crossing"; for "zebra stripes", the 4th best by vector gets "zebra stripes" and the 2nd
    best "zebra" (text ranking: 4th, then 2nd). The file names' stems are the titles again afterwards."""
    crossing, stripes = vector_order(tagged, "pelican crossing"), vector_order(tagged, "zebra stripes")
    chosen = {"worst": crossing[-1], "fourth": stripes[3], "second": stripes[1]}
    assert len(set(chosen.values())) == 3
    titles = {"worst": "Pelican crossing", "fourth": "zebra stripes", "second": "zebra"}
    for name, video_id in chosen.items():
        tagged.catalog.set_metadata(video_id, title=titles[name])
    yield chosen
    for video_id in chosen.values():
        tagged.catalog.set_metadata(video_id, title=Path(tagged.catalog.get_video(video_id).path).stem)


def test_hybrid_finds_a_title_match_the_vectors_rank_low(tagged: Tagged, service: QueryService,
                                                          titled: dict[str, int]) -> None:
    worst = titled["worst"]
    assert vector_order(tagged, "pelican crossing").index(worst) + 1 > HYBRID_DEPTH
    vector = service.search("pelican crossing", 10)
    assert worst not in [h.video_id for h in vector.hits] and vector.mode == "vector"
    assert all(h.fusion is None for h in vector.hits)
    hybrid = service.search("pelican crossing", 10, mode="hybrid")
    hit = next(h for h in hybrid.hits if h.video_id == worst)
    assert hit.fusion.signals == ["text"] and dict(hit.fusion.ranks) == {"text": 1}
    assert hit.score == pytest.approx(1 / 61) and hybrid.mode == "hybrid"
    # its moment is its own best segment, scored like any other
    best = brute_force(tagged.lib, QUERIES["pelican crossing"], {worst}, 1)[0][1]
    assert hit.moment.score == pytest.approx(best, abs=1e-5)
    assert "text" in hybrid.timings_ms


def test_hybrid_order_is_the_hand_computed_fusion(tagged: Tagged, client: FlaskClient, titled: dict[str, int]) -> None:
    order = vector_order(tagged, "zebra stripes")
    first, second, third, fourth = order[:4]
    want = {  # vector ranks 1..4 (and more); text: "zebra stripes" (4th) matches both words, "zebra" (2nd) one
        second: (1 / 62 + 1 / 62, ["vector", "text"], {"vector": 2, "text": 2}),  # 0.032258
        fourth: (1 / 64 + 1 / 61, ["vector", "text"], {"vector": 4, "text": 1}),  # 0.032018
        first: (1 / 61, ["vector"], {"vector": 1}),  # 0.016393
        third: (1 / 63, ["vector"], {"vector": 3}),  # 0.015873
    }
    for resp in (client.get("/api/search?q=zebra+stripes&k=4&mode=hybrid"),
                 client.post("/api/search", json={"q": "zebra stripes", "k": 4, "mode": "hybrid"})):
        body = resp.get_json()
        assert resp.status_code == 200 and body["mode"] == "hybrid"
        assert [h["video_id"] for h in body["hits"]] == [second, fourth, first, third]
        for hit in body["hits"]:
            score, signals, ranks = want[hit["video_id"]]
            assert hit["fused_score"] == pytest.approx(score, abs=1e-6) and hit["score"] == hit["fused_score"]
            assert hit["signals"] == signals and hit["ranks"] == ranks
    plain = client.get("/api/search?q=zebra+stripes&k=4").get_json()
    assert plain["mode"] == "vector" and [h["video_id"] for h in plain["hits"]] == order[:4]
    assert all(h["signals"] == ["vector"] and h["fused_score"] is None and h["ranks"] == {} for h in plain["hits"])
    # paging the fused list: the second page starts where the first stopped
    page = client.get("/api/search?q=zebra+stripes&k=2&offset=2&mode=hybrid").get_json()
    assert [h["video_id"] for h in page["hits"]] == [first, third]


def test_filters_apply_to_both_signals(tagged: Tagged, service: QueryService, titled: dict[str, int]) -> None:
    worst = titled["worst"]
    tag = next(iter(VOCABULARY[j] for j in range(len(VOCABULARY)) if VOCABULARY[j] not in tagged.tags[worst]))
    filters = SearchFilters(tags=(tag,))
    got = service.search("pelican crossing", 10, mode="hybrid", filters=filters)
    assert worst not in [h.video_id for h in got.hits]  # the title matches, the filter does not
    assert {h.video_id for h in got.hits} <= tagged.where({tag})
    allowed = service.search("pelican crossing", 10, mode="hybrid", filters=SearchFilters(video_ids=(worst,)))
    assert [h.video_id for h in allowed.hits] == [worst]
    assert allowed.hits[0].fusion.signals == ["vector", "text"]  # alone, it is also the vector ranking's first
    assert service.search("pelican crossing", 10, mode="hybrid", min_score=1.0).hits == []  # no moment, no hit


def test_text_search_follows_edits_and_deletion(tagged: Tagged) -> None:
    catalog = tagged.catalog
    video_id = _add_video(catalog, str(tagged.lib.root / "a" / "quokka_island.mp4"), "e" * 64)
    try:
        assert catalog.text_ranking(["quokka"], None, KEY, 5) == [video_id]  # by its title and file name
        assert catalog.text_ranking(["quokka"], None, "another-space", 5) == []  # no segments there
        assert catalog.segment_ids_of([video_id], KEY).tolist() == [s.id for s in catalog.segments_of(video_id)]
        assert catalog.segment_ids_of([video_id], "another-space").tolist() == []
        catalog.set_metadata(video_id, title="Marsupial at dawn")
        assert catalog.text_ranking(["marsupial"], None, KEY, 5) == [video_id]
        assert catalog.text_ranking(["island"], None, KEY, 5) == [video_id]  # the file name still holds it
        catalog.set_metadata(video_id, tags=["Rottnest", "wildlife"])
        assert catalog.text_ranking(["rottnest"], None, KEY, 5) == [video_id]
        catalog.set_metadata(video_id, tags=[])
        assert catalog.text_ranking(["rottnest"], None, KEY, 5) == []
        catalog.mark_video_running(video_id, tagged.lib.root / "b" / "wallaby.mp4")  # re-indexed from a new path
        assert catalog.text_ranking(["island"], None, KEY, 5) == [] and catalog.text_ranking(["wallaby"], None, KEY, 5) == [video_id]
        assert catalog.text_ranking(["wallabies"], None, KEY, 5) == [video_id]  # stemmed on both databases
        assert catalog.text_ranking(["marsupial"], SearchFilters(tags=("beach",)), KEY, 5) == []
    finally:
        catalog.delete_video(video_id)
    assert catalog.text_ranking(["marsupial"], None, KEY, 5) == [] and catalog.tags_of([video_id]) == {}
    with catalog.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert conn.execute(text("SELECT count(*) FROM video_fts WHERE rowid = :v"), {"v": video_id}).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM video_fts")).scalar_one() == len(tagged.tags)


# ----- the CLI, end to end --------------------------------------------------------------------------
def test_cli_tags_a_video_and_searches_it_in_hybrid_mode(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for name in ("red_ball.mp4", "snow.mp4"):
        shutil.copy(samples_dir / name, media / name)
    runtime = build_runtime(settings)
    for name in ("red_ball", "snow"):
        runtime.ingestor().run_job(runtime.catalog.create_job(media / f"{name}.mp4").id)
    snow = next(v for v in runtime.catalog.list_videos()[0] if v.title == "snow")

    done = vidseek(settings, "tag", str(snow.id), "--set", "Winter, Mountains ,", "--title", "Alpine blizzard")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"video {snow.id}: Alpine blizzard  tags: mountains, winter"

    found = vidseek(settings, "search", "a blizzard in the mountains", "--mode", "hybrid", "--tag", "WINTER",
                    "--ingested-after", "2000-01-01", "--ingested-before", "2999-01-01T00:00:00+02:00")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith(" 1. ") and "Alpine blizzard" in lines[0] and lines[0].endswith("(vector+text)")
    assert len(lines) == 2  # the tag filter let only the snow video through

    for args, code, reason in ((["tag", "987654", "--set", "x"], 1, "no video 987654"),
                               (["tag", str(snow.id), "--set", "a" * 41], 2, "1 to 40 characters"),
                               (["tag", str(snow.id)], 2, "give --set TAGS and/or --title TITLE"),
                               (["search", "x", "--ingested-after", "last week"], 2, "ISO 8601"),
                               (["search", "x", "--tag", ""], 2, "a tag must have 1 to 40 characters")):
        failed = vidseek(settings, *args)
        assert failed.returncode == code and reason in failed.stderr and "Traceback" not in failed.stderr, failed.stderr


def test_hybrid_benchmark_runs(capsys: pytest.CaptureFixture) -> None:
    hybrid_bench(["--videos", "30", "--segments", "2", "--dim", "8", "--queries", "3"])
    table = capsys.readouterr().out
    assert table.count("| SQLite |") == 3 and table.count("| PostgreSQL |") == 3 and "| hybrid text stage |" in table
