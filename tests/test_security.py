"""Access control: the API key on read routes when configured (/healthz always open), CORS off
unless origins are listed, and the settings that turn them on."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from indexer.service import build_runtime
from search.api import create_app
from search.settings import Settings, SettingsError

KEY = "s3cret"
READS = ["/api/search?q=ball", "/api/videos", "/api/videos/1", "/api/jobs/1", "/openapi.json", "/"]


def client_for(settings: Settings, **overrides: object) -> FlaskClient:
    return create_app(build_runtime(settings.with_overrides(**overrides)).api_context()).test_client()


def test_protected_reads_need_the_key_and_health_stays_open(settings: Settings) -> None:
    client = client_for(settings, api_key=KEY, protect_reads=True)
    for url in READS:
        resp = client.get(url)
        assert resp.status_code == 401, url
        assert "API key" in resp.get_json()["error"]["message"]
        assert client.get(url, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get(url, headers={"X-API-Key": KEY}).status_code in (200, 404), url
    assert client.get("/api/search?q=ball", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/api/search", json={"q": "ball"}).status_code == 401  # the POST form is a read too
    assert client.post("/api/search", json={"q": "ball"}, headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.post("/api/videos", json={"path": "x.mp4"}).status_code == 401


def test_reads_are_open_by_default_while_writes_need_the_key(settings: Settings) -> None:
    client = client_for(settings, api_key=KEY)
    assert all(client.get(url).status_code in (200, 404) for url in READS)
    assert client.post("/api/search", json={"q": "ball"}).status_code == 200
    assert client.delete("/api/videos/1").status_code == 401


def test_cors_is_off_by_default(settings: Settings) -> None:
    client = client_for(settings)
    resp = client.get("/api/search?q=ball", headers={"Origin": "https://evil.example"})
    assert resp.status_code == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_cors_allows_exactly_the_configured_origins(settings: Settings) -> None:
    client = client_for(settings, api_key=KEY, protect_reads=True, cors_origins=("https://app.example",))
    preflight = client.options("/api/search", headers={"Origin": "https://app.example",
                                                       "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "X-API-Key"})
    assert preflight.status_code == 200  # preflights carry no key, even with protected reads
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Origin" in preflight.headers["Vary"]
    resp = client.get("/api/search?q=ball", headers={"Origin": "https://app.example", "X-API-Key": KEY})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = client.get("/api/search?q=ball", headers={"Origin": "https://other.example", "X-API-Key": KEY})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_access_settings_from_the_environment() -> None:
    s = Settings.from_env({"VIDSEEK_API_KEY": KEY, "VIDSEEK_PROTECT_READS": "yes",
                           "VIDSEEK_CORS_ORIGINS": "https://a.example, https://b.example"})
    assert s.protect_reads and s.cors_origins == ("https://a.example", "https://b.example")
    assert not Settings.from_env({"VIDSEEK_PROTECT_READS": "0"}).protect_reads
    with pytest.raises(SettingsError, match="VIDSEEK_PROTECT_READS needs VIDSEEK_API_KEY"):
        Settings.from_env({"VIDSEEK_PROTECT_READS": "1"})
    with pytest.raises(SettingsError, match="VIDSEEK_PROTECT_READS"):
        Settings.from_env({"VIDSEEK_PROTECT_READS": "maybe"})
    with pytest.raises(SettingsError, match="VIDSEEK_JOB_STALE_SECONDS"):
        Settings.from_env({"VIDSEEK_HEARTBEAT_SECONDS": "30", "VIDSEEK_JOB_STALE_SECONDS": "40"})
