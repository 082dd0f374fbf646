"""``GET /api/search?rerank=...`` end to end with the tiny CLIP model (and a tiny LLaVA-OneVision for
``llm``): first-stage and rerank scores, refined moments, timings, videos without summaries, rerank_k,
unknown names, and the fallback flag when the video LLM is missing or too slow."""

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from indexer.service import Runtime, build_runtime
from models.rerankers.late import LateParams, late_interaction, project_summaries
from models.summary import VideoSummary
from search.api import create_app
from search.catalog import embedding_from_bytes
from search.query import QueryService
from models.rerankers.llava import llm_summary_key
from search.rerank_service import LlmReranker, RerankOutcome, RerankService, Rescored
from search.settings import Settings
from search.tables import LLM_SPACE
from benchmarks.tiny_llava import save_tiny_llava

QUERY = "a red ball"


def ingest(runtime: Runtime, samples_dir: Path, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        job = runtime.catalog.create_job(samples_dir / f"{name}.mp4")
        runtime.ingestor().run_job(job.id)
        ids[name] = runtime.catalog.get_job(job.id).video_id
    return ids


def client_of(runtime: Runtime) -> FlaskClient:
    return create_app(runtime.api_context()).test_client()


def search(client: FlaskClient, **params) -> dict:
    resp = client.get("/api/search", query_string={"q": QUERY, "k": 10, **params})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava-ov")


@pytest.fixture()
def late_runtime(settings: Settings, samples_dir: Path) -> tuple[Runtime, dict[str, int]]:
    runtime = build_runtime(settings.with_overrides(summary="holitom"))
    return runtime, ingest(runtime, samples_dir, ["red_ball", "three_scenes", "stripes"])


def test_late_rerank_returns_first_stage_and_rerank_scores_and_the_refined_moment(late_runtime) -> None:
    runtime, ids = late_runtime
    client = client_of(runtime)
    body = search(client, rerank="late")
    assert body["rerank"] == {"method": "late", "candidates": 3, "rescored": 3, "without_summary": [], "fallback": False,
                              "reason": None, "details": body["rerank"]["details"]}
    assert {"encode", "search", "group", "rerank", "rerank_load", "rerank_score", "total"} <= set(body["timings_ms"])
    hits = body["hits"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    text = runtime.backbone.encode_text([QUERY])[0]
    for hit in hits:
        assert hit["score"] == hit["rerank_score"]
        record = runtime.catalog.summaries([hit["video_id"]], runtime.ingestor().key)[hit["video_id"]]
        summary = VideoSummary.from_bytes(record.data)
        (units,) = project_summaries([summary.tokens], runtime.backbone.project)
        expected = late_interaction(units, summary, text, hit["first_stage_score"], LateParams(), 1.0)
        assert hit["rerank_score"] == pytest.approx(expected.score, abs=1e-5)
        assert (hit["start"], hit["end"]) == (pytest.approx(expected.start, abs=1e-3), pytest.approx(expected.end, abs=1e-3))
        assert hit["segment_end"] > hit["segment_start"] >= 0 and hit["end"] > hit["start"] >= 0
    assert search(client)["rerank"]["method"] == "late"  # the default once summaries are configured


class MovingReranker:
    """Moves every candidate's moment to ``start``..``end`` seconds (as late interaction may)."""

    name, same_scale = "late", True

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end

    def rescore(self, query, vector, candidates):
        return RerankOutcome({c.video_id: Rescored(c.score, self.start, self.end) for c in candidates})


def test_a_moment_moved_by_the_reranker_shows_its_own_segment_thumbnail(settings: Settings, samples_dir: Path) -> None:
    runtime = build_runtime(settings)
    video = ingest(runtime, samples_dir, ["three_scenes"])["three_scenes"]
    first, second, third = runtime.catalog.segments_of(video)
    vector = embedding_from_bytes(first.embedding)  # the first stage finds the first segment
    context = runtime.api_context()

    def hit_for(start: float, end: float) -> dict:
        context.queries = QueryService(runtime.catalog, runtime.index, lambda q: vector,
                                       reranking=RerankService({"late": MovingReranker(start, end)}, "late", k=10))
        (hit,) = search(create_app(context).test_client(), rerank="late")["hits"]
        assert hit["segment_id"] == first.id and hit["segment_start"] == first.start
        assert (hit["start"], hit["end"]) == (start, end)
        return hit

    moved = hit_for(third.start + 1.0, third.start + 3.0)
    assert moved["thumbnail_url"] == f"/api/segments/{third.id}/thumbnail"
    assert hit_for(second.start, second.end)["thumbnail_url"] == f"/api/segments/{second.id}/thumbnail"
    # refined inside the first-stage segment: its own thumbnail
    assert hit_for(first.start + 1.0, first.start + 2.0)["thumbnail_url"] == f"/api/segments/{first.id}/thumbnail"
    assert runtime.catalog.segment_at(video, -5.0).id == first.id
    assert runtime.catalog.segment_at(video, 1e6).id == third.id


def test_rerank_none_keeps_the_first_stage(late_runtime) -> None:
    runtime, _ = late_runtime
    body = search(client_of(runtime), rerank="none")
    assert body["rerank"]["method"] == "none" and "rerank" not in body["timings_ms"]
    for hit in body["hits"]:
        assert hit["rerank_score"] is None and hit["score"] == hit["first_stage_score"]
        assert (hit["start"], hit["end"]) == (hit["segment_start"], hit["segment_end"])


def test_unknown_rerank_names_are_rejected(late_runtime) -> None:
    resp = client_of(late_runtime[0]).get("/api/search", query_string={"q": QUERY, "rerank": "colbert"})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["message"] == "rerank must be one of none, late, llm; got 'colbert'"


def test_llm_rerank_without_a_configured_model_falls_back_with_a_flag(late_runtime) -> None:
    body = search(client_of(late_runtime[0]), rerank="llm")
    assert body["rerank"]["fallback"] and "VIDSEEK_LLM_RERANKER" in body["rerank"]["reason"]
    assert all(h["rerank_score"] is None and h["score"] == h["first_stage_score"] for h in body["hits"])
    assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]), reverse=True)


def test_videos_without_summaries_keep_their_first_stage_score(settings: Settings, samples_dir: Path) -> None:
    before = build_runtime(settings)  # ingestion without summaries, as before they were enabled
    old = ingest(before, samples_dir, ["red_ball"])["red_ball"]
    assert search(client_of(before))["rerank"]["method"] == "none"  # nothing to rerank with by default
    after = build_runtime(settings.with_overrides(summary="vqtoken"))
    new = ingest(after, samples_dir, ["three_scenes"])["three_scenes"]
    body = search(client_of(after), rerank="late")
    assert body["rerank"]["without_summary"] == [old] and body["rerank"]["rescored"] == 1
    by_id = {h["video_id"]: h for h in body["hits"]}
    assert by_id[old]["rerank_score"] is None and by_id[old]["score"] == by_id[old]["first_stage_score"]
    assert by_id[new]["rerank_score"] is not None


def test_only_the_top_rerank_k_videos_are_rescored(late_runtime) -> None:
    runtime = build_runtime(late_runtime[0].settings.with_overrides(rerank_k=1))  # same catalog
    body = search(client_of(runtime), rerank="late")
    assert body["rerank"]["candidates"] == 1 and body["rerank"]["rescored"] == 1
    assert body["hits"][0]["rerank_score"] is not None
    assert all(h["rerank_score"] is None and h["score"] == h["first_stage_score"] for h in body["hits"][1:])


def test_llm_rerank_scores_p_yes_over_stored_llm_summaries(settings: Settings, samples_dir: Path, tiny_llava_dir: Path) -> None:
    source = str(tiny_llava_dir)
    runtime = build_runtime(settings.with_overrides(llm_reranker=source, llm_frames=8, llm_inner_layer=2))
    assert "no video has a summary for the video LLM" in runtime.queries.reranking.availability()["llm"]  # configured, idle
    ids = ingest(runtime, samples_dir, ["red_ball", "three_scenes", "stripes"])
    assert runtime.queries.reranking.availability()["llm"] is None  # the web page now offers it
    stored = runtime.catalog.summaries(list(ids.values()), llm_summary_key(source, "holitom"), LLM_SPACE)
    assert set(stored) == set(ids.values())
    model = runtime.llm.get()
    summaries = {vid: VideoSummary.from_bytes(r.data) for vid, r in stored.items()}
    for s in summaries.values():
        assert s.method == "holitom" and s.tokens.shape[1] == 64 and s.num_frames == 8 and s.num_patches == 16

    body = search(client_of(runtime), rerank="llm")
    info = body["rerank"]
    assert not info["fallback"] and info["rescored"] == 3 and info["without_summary"] == []
    visual = {vid: s.num_tokens + 1 for vid, s in summaries.items()}  # + LLaVA-OV's newline token
    assert info["details"]["visual_tokens"] == sum(visual.values())
    assert info["details"]["visual_tokens_after_merge"] == sum(round(v * 0.5) for v in visual.values())
    expected = {vid: float(model.score(QUERY, [model.visual_inputs(s.tokens)]).p_yes[0]) for vid, s in summaries.items()}
    assert [h["video_id"] for h in body["hits"]] == sorted(expected, key=lambda v: -expected[v])
    for hit in body["hits"]:
        assert hit["rerank_score"] == pytest.approx(expected[hit["video_id"]], abs=1e-5) and 0 < hit["rerank_score"] < 1

    # the same request with a time limit nobody can meet: first-stage order, flagged
    key = llm_summary_key(source, "holitom")
    runtime.queries.reranking.rerankers["llm"] = LlmReranker(runtime.catalog, key, runtime.llm, timeout=1e-6, batch_tokens=8192)
    body = search(client_of(runtime), rerank="llm")
    assert body["rerank"]["fallback"] and "longer than" in body["rerank"]["reason"]
    assert all(h["rerank_score"] is None for h in body["hits"])
    assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]), reverse=True)


def test_an_unloadable_video_llm_does_not_stop_ingestion(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    runtime = build_runtime(settings.with_overrides(llm_reranker=str(tmp_path / "no-such-model")))
    job = runtime.catalog.create_job(samples_dir / "red_ball.mp4")
    runtime.ingestor().run_job(job.id)
    job = runtime.catalog.get_job(job.id)
    assert job.status.value == "done" and "no LLM summary" in job.message
    body = search(client_of(runtime), rerank="llm")
    assert body["rerank"]["without_summary"] == [job.video_id] and not body["rerank"]["fallback"]


def test_openapi_documents_the_rerank_parameter(late_runtime) -> None:
    doc = client_of(late_runtime[0]).get("/openapi.json").get_json()
    params = {p["name"]: p for p in doc["paths"]["/api/search"]["get"]["parameters"]}
    assert params["rerank"]["schema"]["enum"] == ["none", "late", "llm"]
    assert {"first_stage_score", "rerank_score", "segment_start"} <= set(doc["components"]["schemas"]["Hit"]["required"])
