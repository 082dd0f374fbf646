"""REST API: every route's success and error cases, and the OpenAPI document against the routes."""

import io
import re
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from indexer.service import Runtime, build_runtime
from search.api import create_app
from search.settings import Settings

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


def test_search_accepts_non_ascii_and_undecodable_bytes(client: FlaskClient) -> None:
    assert client.get("/api/search", query_string={"q": "ein Hund fängt 🥏"}).status_code == 200
    assert client.get("/api/search?q=%ff%fe%fd").status_code == 200


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
    assert video["status"] == "done" and video["title"].endswith("my_clip")
    stored = Path(video["path"])
    assert stored.parent == settings.upload_dir.resolve() and stored.read_bytes() == data
    assert not list(settings.upload_dir.glob("*.part"))
    assert len(client.get("/api/search?q=square").get_json()["hits"]) == 1

    assert client.delete(f"/api/videos/{job['video_id']}").status_code == 401
    assert client.delete(f"/api/videos/{job['video_id']}", headers=KEY).status_code == 204
    assert not stored.exists()
    assert client.get(f"/api/videos/{job['video_id']}").status_code == 404
    assert client.get("/api/search?q=square").get_json()["hits"] == []
    assert client.delete(f"/api/videos/{job['video_id']}", headers=KEY).status_code == 404


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
    assert client.get(url, headers={"Range": f"bytes={len(data) + 10}-"}).status_code == 416
    assert client.get("/api/videos/999999/stream").status_code == 404


def test_health_ui_and_method_errors(client: FlaskClient, runtime: Runtime) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {"status": "ok", "database": "ok", "index_segments": 0, "model": runtime.backbone.key,
                                 "precision": "fp32", "precision_reason": "set by VIDSEEK_PRECISION"}
    page = client.get("/")
    assert page.status_code == 200 and b'id="search-form"' in page.data
    assert b'<span class="model precision" title="set by VIDSEEK_PRECISION">fp32</span>' in page.data
    assert client.get("/static/app.js").status_code == 200
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
