"""REST API: every route's success and error cases, and the OpenAPI document against the routes."""

import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from indexer.service import Runtime, build_runtime
from search.api import create_app
from search.api.video_routes import stored_upload_name
from search.settings import Settings
from search.text_batcher import TextBatcher

KEY = {"X-API-Key": "test-key"}


@pytest.fixture()
def runtime(settings: Settings) -> Runtime:
    return build_runtime(settings.with_overrides(api_key="test-key", max_upload_mb=1))


@pytest.fixture()
def client(runtime: Runtime) -> FlaskClient:
    return create_app(runtime.api_context()).test_client()


def wait_job(client: FlaskClient, job_url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(job_url).get_json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_url} did not finish")


def add(client: FlaskClient, path: Path) -> dict:
    resp = client.post("/api/videos", json={"path": str(path)}, headers=KEY)
    assert resp.status_code == 202, resp.get_json()
    assert resp.headers["Location"] == resp.get_json()["job_url"]
    return wait_job(client, resp.get_json()["job_url"])


@pytest.fixture()
def indexed(client: FlaskClient, samples_dir: Path) -> dict[str, int]:
    ids = {}
    for name in ("red_ball", "three_scenes"):
        job = add(client, samples_dir / f"{name}.mp4")
        assert job["status"] == "done" and job["precision"] == "fp32", job
        ids[name] = job["video_id"]
    return ids


def error_of(resp) -> str:
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["status"] == resp.status_code
    return body["error"]["message"]


def test_search_returns_ranked_videos_with_moments(client: FlaskClient, indexed: dict) -> None:
    resp = client.get("/api/search", query_string={"q": "a red ball", "k": 5})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["query"] == "a red ball" and len(body["hits"]) == 2
    assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]), reverse=True)
    hit = next(h for h in body["hits"] if h["video_id"] == indexed["three_scenes"])
    assert hit["end"] > hit["start"] >= 0 and len(hit["moments"]) == 2
    assert client.get(hit["thumbnail_url"]).mimetype == "image/jpeg"
    assert client.get(hit["video_url"]).get_json()["id"] == hit["video_id"]
    assert set(body["timings_ms"]) >= {"encode", "search", "total"}
    assert len(client.get("/api/search?q=ball&k=1").get_json()["hits"]) == 1


def test_concurrent_searches_through_the_text_batcher_answer_like_sequential_ones(
    runtime: Runtime, client: FlaskClient, indexed: dict
) -> None:
    queries = [f"a red ball number {i}" for i in range(6)] + ["three scenes", "a moving square"]
    app = client.application
    # loaded before the burst, as create_service_app does: a search meeting a running refresh does not
    # wait for it, and the first refresh after ingestion could otherwise hide the new videos from some
    runtime.index.refresh(force=True)
    with ThreadPoolExecutor(len(queries)) as pool:  # one test client per thread, like gunicorn threads
        together = list(pool.map(lambda q: app.test_client().get("/api/search", query_string={"q": q}).get_json(), queries))
    batcher = runtime.queries.space.encode.__wrapped__
    assert isinstance(batcher, TextBatcher) and batcher.texts == len(queries)
    runtime.queries.space.encode.cache_clear()
    for query, body in zip(queries, together):
        alone = client.get("/api/search", query_string={"q": query}).get_json()
        assert body["query"] == query
        assert {h["video_id"]: h["score"] for h in body["hits"]} == pytest.approx(
            {h["video_id"]: h["score"] for h in alone["hits"]}, abs=1e-4)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": ""}, "empty"),
        ({"q": "   "}, "empty"),
        ({}, "empty"),
        ({"q": "x" * 10_000}, "longer than"),
        ({"q": "dog", "k": "-1"}, "k must be"),
        ({"q": "dog", "k": str(10**9)}, "k must be"),
        ({"q": "dog", "k": "ten"}, "integer"),
    ],
)
def test_search_rejects_bad_queries(client: FlaskClient, params: dict, message: str) -> None:
    resp = client.get("/api/search", query_string=params)
    assert resp.status_code == 400 and message in error_of(resp)


def test_search_by_post_takes_the_same_arguments_as_json(client: FlaskClient, indexed: dict) -> None:
    by_get = client.get("/api/search", query_string={"q": "a red ball", "k": 5}).get_json()
    by_post = client.post("/api/search", json={"q": "a red ball", "k": 5}).get_json()
    assert by_post["hits"] == by_get["hits"] and by_post["query"] == by_get["query"]
    long_query = "条纹" * 500  # 1000 characters, 9 KB percent-encoded: too long for many servers' URLs
    assert client.post("/api/search", json={"q": long_query}).get_json()["query"] == long_query
    assert client.post("/api/search", json={"q": "ball", "rerank": None}).status_code == 200


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"q": ""}, 400, "empty"),
        ({}, 400, "empty"),
        ({"q": "x" * 10_000}, 400, "longer than"),
        ({"q": 3}, 400, "q must be a string"),
        ({"q": "dog", "k": "5"}, 400, "k must be an integer"),
        ({"q": "dog", "k": True}, 400, "k must be an integer"),
        ({"q": "dog", "k": 10**9}, 400, "k must be"),
        ({"q": "dog", "rerank": 1}, 400, "rerank must be a string"),
        ({"q": "dog", "rerank": "colbert"}, 400, "rerank must be one of"),
        (["dog"], 400, "JSON object"),
        ("not json", 400, "JSON object"),
        ({"q": "x" * 70_000}, 413, "64 KiB"),
    ],
)
def test_search_by_post_rejects_bad_bodies(client: FlaskClient, body, status: int, message: str) -> None:
    if body == "not json":
        resp = client.post("/api/search", data=b"q=dog", content_type="application/json")
    else:
        resp = client.post("/api/search", json=body)
    assert resp.status_code == status and message in error_of(resp)


def test_search_accepts_non_ascii_and_refuses_undecodable_bytes(client: FlaskClient) -> None:
    assert client.get("/api/search", query_string={"q": "ein Hund fängt 🥏"}).status_code == 200
    assert client.get("/api/search?q=%EF%BF%BD").status_code == 200  # U+FFFD itself is text
    for raw in ("%ff%fe%fd", "%FF%FE", "dog%C3"):
        resp = client.get(f"/api/search?q={raw}")
        assert resp.status_code == 400 and "not valid UTF-8" in error_of(resp)


def test_add_video_errors(client: FlaskClient, settings: Settings, tmp_path: Path) -> None:
    assert client.post("/api/videos", json={"path": "/etc/passwd"}).status_code == 401
    assert client.post("/api/videos", json={"path": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
    resp = client.post("/api/videos", json={"path": "../../etc/passwd"}, headers=KEY)
    assert resp.status_code == 403 and "outside the media roots" in error_of(resp)
    resp = client.post("/api/videos", json={"path": "/etc/passwd"}, headers=KEY)
    assert resp.status_code == 403
    media = tmp_path / "media"
    media.mkdir()
    (media / "escape.mp4").symlink_to("/etc/passwd")
    assert client.post("/api/videos", json={"path": str(media / "escape.mp4")}, headers=KEY).status_code == 403
    assert client.post("/api/videos", json={"path": str(media / "nope.mp4")}, headers=KEY).status_code == 404
    (media / "notes.mp4").write_text("not a video")
    resp = client.post("/api/videos", json={"path": str(media / "notes.mp4")}, headers=KEY)
    assert resp.status_code == 422 and "not a usable video" in error_of(resp)
    for body in ({}, {"path": ""}, {"path": 5}, []):
        assert client.post("/api/videos", json=body, headers=KEY).status_code == 400
    assert client.post("/api/videos", data=b"\xff\x00", content_type="application/json", headers=KEY).status_code == 400


def test_bearer_token_is_accepted(client: FlaskClient, samples_dir: Path) -> None:
    resp = client.post("/api/videos", json={"path": str(samples_dir / "snow.mp4")},
                       headers={"Authorization": "Bearer test-key"})
    assert resp.status_code == 202
    assert wait_job(client, resp.get_json()["job_url"])["status"] == "done"


def test_upload_then_delete(client: FlaskClient, samples_dir: Path, settings: Settings) -> None:
    data = (samples_dir / "blue_square.mp4").read_bytes()
    resp = client.post("/api/videos", data={"file": (io.BytesIO(data), "my clip.mp4")},
                       content_type="multipart/form-data", headers=KEY)
    assert resp.status_code == 202, resp.get_json()
    job = wait_job(client, resp.get_json()["job_url"])
    assert job["status"] == "done"
    video = client.get(f"/api/videos/{job['video_id']}").get_json()
    assert video["status"] == "done" and video["title"] == "my clip"
    stored = Path(video["path"])
    assert stored.parent.parent == settings.upload_dir.resolve() and stored.read_bytes() == data
    assert not list(settings.upload_dir.rglob("*.part"))
    hash_folder = settings.thumbnail_dir / video["content_hash"][:2] / video["content_hash"]
    assert len(list(hash_folder.iterdir())) == len(video["segments"])
    assert len(client.get("/api/search?q=square").get_json()["hits"]) == 1

    assert client.delete(f"/api/videos/{job['video_id']}").status_code == 401
    assert client.delete(f"/api/videos/{job['video_id']}", headers=KEY).status_code == 204
    assert not stored.exists() and not stored.parent.exists()  # the upload's folder too
    assert not hash_folder.exists() and not hash_folder.parent.exists()  # no empty thumbnail folders left
    assert client.get(f"/api/videos/{job['video_id']}").status_code == 404
    assert client.get("/api/search?q=square").get_json()["hits"] == []
    assert client.delete(f"/api/videos/{job['video_id']}", headers=KEY).status_code == 404


def test_uploads_keep_the_client_file_name_as_title_and_a_duplicate_is_not_kept(
    client: FlaskClient, samples_dir: Path, settings: Settings
) -> None:
    data = (samples_dir / "snow.mp4").read_bytes()
    resp = client.post("/api/videos", data={"file": (io.BytesIO(data), "ünï cødé 🎬.avi")},
                       content_type="multipart/form-data", headers=KEY)
    first = wait_job(client, resp.get_json()["job_url"])
    video = client.get(f"/api/videos/{first['video_id']}").get_json()
    assert first["status"] == "done" and video["title"] == "ünï cødé 🎬"
    assert Path(video["path"]).name == "ünï cødé 🎬.avi"

    again = client.post("/api/videos", data={"file": (io.BytesIO(data), "../same again.mp4")},
                        content_type="multipart/form-data", headers=KEY)
    second = wait_job(client, again.get_json()["job_url"])
    assert second["status"] == "done" and second["video_id"] == first["video_id"] and "already indexed" in second["message"]
    assert not Path(second["path"]).exists()  # the redundant copy is removed with its folder
    assert [p.name for p in settings.upload_dir.rglob("*") if p.is_file()] == ["ünï cødé 🎬.avi"]
    assert len(list(settings.upload_dir.iterdir())) == 1

    assert stored_upload_name("a/b\\c\x00d.mp4") == "a_b_c_d.mp4"
    assert stored_upload_name("..hidden.mp4") == "hidden.mp4" and stored_upload_name(".mp4") == "upload.mp4"
    assert len(stored_upload_name("é" * 300 + ".mkv").encode()) <= 200


def test_a_directory_is_refused_with_the_reason(client: FlaskClient, tmp_path: Path) -> None:
    folder = tmp_path / "media" / "clips"
    folder.mkdir(parents=True)
    resp = client.post("/api/videos", json={"path": str(folder)}, headers=KEY)
    assert resp.status_code == 422 and "is a directory; the API ingests one file" in error_of(resp)
    assert "use the CLI" in error_of(resp)


def test_upload_errors(client: FlaskClient, settings: Settings) -> None:
    resp = client.post("/api/videos", data={"file": (io.BytesIO(b"plain text" * 100), "fake.mp4")},
                       content_type="multipart/form-data", headers=KEY)
    assert resp.status_code == 422
    assert not [p for p in settings.upload_dir.iterdir()]  # rejected uploads are not kept
    resp = client.post("/api/videos", data={"file": (io.BytesIO(b"x"), "readme.txt")},
                       content_type="multipart/form-data", headers=KEY)
    assert resp.status_code == 422
    resp = client.post("/api/videos", data={"other": "x"}, content_type="multipart/form-data", headers=KEY)
    assert resp.status_code == 400
    huge = io.BytesIO(b"\0" * (2 << 20))  # limit is 1 MiB in this fixture
    resp = client.post("/api/videos", data={"file": (huge, "big.mp4")}, content_type="multipart/form-data", headers=KEY)
    assert resp.status_code == 413 and "1 MiB" in error_of(resp)


def test_videos_and_jobs(client: FlaskClient, indexed: dict) -> None:
    listing = client.get("/api/videos").get_json()
    assert listing["total"] == 2 and {v["id"] for v in listing["videos"]} == set(indexed.values())
    by_title = {v["title"]: v for v in listing["videos"]}
    assert by_title["three_scenes"]["segment_count"] == 3 and by_title["red_ball"]["segment_count"] >= 1
    assert by_title["three_scenes"]["file_name"] == "three_scenes.mp4" and "/" not in by_title["three_scenes"]["folder"]
    assert client.get("/api/videos?limit=1&offset=1").get_json()["videos"][0]["id"] == min(indexed.values())
    video = client.get(f"/api/videos/{indexed['three_scenes']}").get_json()
    assert [(s["start"], s["end"]) for s in video["segments"]] == [(0.0, 12.0), (12.0, 24.0), (24.0, 36.0)]
    assert client.get("/api/videos/999999").status_code == 404
    assert client.get("/api/jobs/1").get_json()["status"] == "done"
    assert client.get("/api/jobs/999999").status_code == 404
    assert client.get("/api/segments/999999/thumbnail").status_code == 404


def test_stream_supports_range_requests(client: FlaskClient, indexed: dict, samples_dir: Path) -> None:
    url = f"/api/videos/{indexed['red_ball']}/stream"
    data = (samples_dir / "red_ball.mp4").read_bytes()
    full = client.get(url)
    assert full.status_code == 200 and full.data == data and full.headers["Accept-Ranges"] == "bytes"
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    for unsatisfiable in (f"bytes={len(data) + 10}-", f"bytes={len(data)}-{len(data) + 5}"):
        refused = client.get(url, headers={"Range": unsatisfiable})
        assert refused.status_code == 416 and refused.headers["Content-Range"] == f"bytes */{len(data)}"
    assert client.get("/api/videos/999999/stream").status_code == 404


def test_health_ui_and_method_errors(client: FlaskClient, runtime: Runtime) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    body = health.get_json()
    assert body == {"status": "ok", "database": "ok", "index_segments": 0, "index": "flat", "index_lists": None,
                    "index_refreshed_seconds_ago": body["index_refreshed_seconds_ago"], "model": runtime.backbone.key,
                    "precision": "fp32", "precision_reason": "set by VIDSEEK_PRECISION",
                    "text_runtime": "onnx", "text_runtime_reason": "auto: CPU with onnxruntime (exact float32 graph)",
                    "space": runtime.queries.space.key, "reindex": None}
    page = client.get("/")
    assert page.status_code == 200 and b'id="search-form"' in page.data
    assert b'<span class="model precision" title="set by VIDSEEK_PRECISION">fp32</span>' in page.data
    assert b'text: onnx</span>' in page.data
    assert client.get("/static/app.js").status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml" and icon.data.startswith(b"<svg")
    resp = client.put("/api/search")
    assert resp.status_code == 405 and {"GET", "POST"} <= set(resp.headers["Allow"].split(", "))
    assert client.get("/api/nothing").status_code == 404


def test_write_routes_are_open_without_a_configured_key(settings: Settings, samples_dir: Path) -> None:
    client = create_app(build_runtime(settings).api_context()).test_client()
    resp = client.post("/api/videos", json={"path": str(samples_dir / "snow.mp4")})
    assert resp.status_code == 202


def test_openapi_document_lists_every_route(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routes = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint.endswith("static"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', __import__("json").dumps(op)):
                assert ref in doc["components"]["schemas"]


@pytest.mark.parametrize(
    "path, status",
    [
        ("clip\x00.mp4", 403),  # NUL byte: never a path
        ("~nobody_vidseek_test/clip.mp4", 404),  # no ~ expansion: a relative name inside the first root
        ("x" * 5000 + ".mp4", 404),  # longer than the OS allows a name to be
    ],
)
def test_paths_the_os_cannot_take_are_client_errors(client: FlaskClient, path: str, status: int) -> None:
    resp = client.post("/api/videos", json={"path": path}, headers=KEY)
    assert resp.status_code == status, resp.get_json()
    error_of(resp)


def test_symlink_loops_are_refused(client: FlaskClient, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.mp4").symlink_to(media / "b.mp4")
    (media / "b.mp4").symlink_to(media / "a.mp4")
    resp = client.post("/api/videos", json={"path": str(media / "a.mp4")}, headers=KEY)
    assert resp.status_code in (403, 404)


def test_library_summary_counts_videos_and_says_which_rerankers_can_act(client: FlaskClient, runtime: Runtime,
                                                                         indexed: dict, tmp_path: Path) -> None:
    bad = tmp_path / "media" / "broken.mp4"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"\x00" * 4096)
    runtime.ingestor().run_job(runtime.catalog.create_job(bad).id)
    body = client.get("/api/library").get_json()
    assert body["videos"] == {"total": 3, "queued": 0, "running": 0, "done": 2, "failed": 1}
    assert body["segments_indexed"] == len(runtime.index) > 0
    assert body["write_key_required"] is True and body["ingestion"] is True and ".mp4" in body["video_extensions"]
    rerankers = {r["name"]: r for r in body["rerankers"]}
    assert rerankers["none"] == {"name": "none", "available": True, "reason": None}
    # no summaries stored (VIDSEEK_SUMMARY=none): late interaction could rescore nothing, and says why
    assert not rerankers["late"]["available"] and "summary" in rerankers["late"]["reason"]
    assert not rerankers["llm"]["available"] and "VIDSEEK_LLM_RERANKER" in rerankers["llm"]["reason"]
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<option value="late"[^>]* disabled', page) and "Late interaction reranking is unavailable" in page


def test_library_offers_late_reranking_once_summaries_exist(settings: Settings, samples_dir: Path) -> None:
    runtime = build_runtime(settings.with_overrides(summary="holitom"))
    client = create_app(runtime.api_context()).test_client()
    assert {r["name"]: r["available"] for r in client.get("/api/library").get_json()["rerankers"]}["late"] is False
    runtime.ingestor().run_job(runtime.catalog.create_job(samples_dir / "red_ball.mp4").id)
    late = {r["name"]: r for r in client.get("/api/library").get_json()["rerankers"]}["late"]
    assert late == {"name": "late", "available": True, "reason": None}
    assert not re.search(r'<option value="late"[^>]* disabled', client.get("/").get_data(as_text=True))


def test_hits_name_their_file_so_same_stem_videos_can_be_told_apart(client: FlaskClient, samples_dir: Path,
                                                                     settings: Settings) -> None:
    other = settings.media_roots[1] / "red_ball.mkv"  # another video with the same stem
    other.parent.mkdir(exist_ok=True)
    other.write_bytes((samples_dir / "stripes.mp4").read_bytes())
    for path in (samples_dir / "red_ball.mp4", other):
        assert add(client, path)["status"] == "done"
    hits = client.get("/api/search?q=a+ball&k=5").get_json()["hits"]
    assert sorted((h["title"], h["file_name"]) for h in hits) == [("red_ball", "red_ball.mkv"), ("red_ball", "red_ball.mp4")]
    assert {h["folder"] for h in hits} == {samples_dir.name, "media"}


def test_health_follows_ingestion_without_a_search(settings: Settings, samples_dir: Path) -> None:
    """The index refreshes in the background: /healthz counts new segments although nobody searched."""
    runtime = build_runtime(settings.with_overrides(index_refresh_seconds=0.2))
    client = create_app(runtime.api_context()).test_client()
    runtime.index.refresh_in_background()
    assert client.get("/healthz").get_json()["index_segments"] == 0
    assert add(client, samples_dir / "three_scenes.mp4")["status"] == "done"
    deadline = time.monotonic() + 30
    while (health := client.get("/healthz").get_json())["index_segments"] != 3:
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    assert 0 <= health["index_refreshed_seconds_ago"] < 5
