"""Prometheus metrics: ``/metrics`` after real searches and ingestion (parsed with prometheus_client's
own parser), read protection, gauges read at scrape time, ``vidseek serve``'s processes adding up
(multiprocess mode), and a Celery worker's ``--metrics-port``."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from indexer.metrics_folder import MetricsAlreadyStarted, shared_metrics_folder
from indexer.service import build_runtime, open_catalog
from indexer.tasks import CeleryQueue, make_celery
from search.api import create_app
from search.catalog import Catalog
from search.db import upgrade
from search.metrics_exposition import ServingStateCollector, metrics_registry, render
from search.segment_index import SegmentIndex
from search.settings import Settings
from search.tables import Status
from tests.conftest import REPO, settings_env, temporary_database
from tests.test_celery import running_worker, wait_for
from tests.test_cli import free_port
from tests.test_topology import Processes, get_json, wait_for_api, wait_until

REQUESTS = "vidseek_http_requests_total"
SEARCH_ROUTE = "/api/search"
GARBAGE = b"garbage" * 100  # no container FFmpeg knows


def value(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 when there are none)."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == sample and labels.items() <= s.labels.items())


def scrape(client: FlaskClient, **headers: str) -> str:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200 and resp.mimetype == "text/plain", resp.data[:300]
    return resp.get_data(as_text=True)


def test_metrics_count_requests_search_stages_and_ingestion(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    runtime = build_runtime(settings)
    client = create_app(runtime.api_context()).test_client()
    before = scrape(client)

    ingestor = runtime.ingestor()
    good = runtime.catalog.create_job(samples_dir / "red_ball.mp4")
    assert ingestor.run_job(good.id) is Status.done
    media = tmp_path / "media"
    media.mkdir()
    (media / "garbage.mp4").write_bytes(GARBAGE)
    (media / "empty.mp4").write_bytes(b"")
    for name in ("garbage.mp4", "empty.mp4"):
        assert ingestor.run_job(runtime.catalog.create_job(media / name).id) is Status.failed
    video_id = runtime.catalog.get_job(good.id).video_id
    runtime.index.refresh(force=True)

    for query in ("a red ball", "snow", "stripes"):
        assert client.get(SEARCH_ROUTE, query_string={"q": query}).status_code == 200
    assert client.get(SEARCH_ROUTE, query_string={"q": "ball", "rerank": "late"}).status_code == 200
    assert client.get(SEARCH_ROUTE, query_string={"q": " "}).status_code == 400
    assert client.get(f"/api/videos/{video_id}").status_code == 200
    assert client.get("/api/videos/987654321").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    def delta(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    # Requests by route (the URL rule: paths with ids or typos add no series), method and status.
    assert delta(REQUESTS, route=SEARCH_ROUTE, method="GET", status="200") == 4
    assert delta(REQUESTS, route=SEARCH_ROUTE, method="GET", status="400") == 1
    assert delta(REQUESTS, route="/api/videos/<int:video_id>", status="200") == 1
    assert delta(REQUESTS, route="/api/videos/<int:video_id>", status="404") == 1
    assert delta(REQUESTS, route="unmatched", status="404") == 1
    assert "987654321" not in after and "/no/such/page" not in after
    assert delta("vidseek_http_request_duration_seconds_count", route=SEARCH_ROUTE) == 5
    assert delta("vidseek_http_request_duration_seconds_sum", route=SEARCH_ROUTE) > 0

    # Search stages: one observation per answered search (the refused query reached no stage).
    for stage in ("encode", "index", "catalog"):
        assert delta("vidseek_search_stage_duration_seconds_count", stage=stage) == 4, stage
    assert delta("vidseek_search_stage_duration_seconds_count", stage="rerank") == 1

    # Gauges read at scrape time.
    assert value(after, "vidseek_index_segments") == runtime.catalog.count_segments() > 0
    assert value(after, "vidseek_index_refresh_age_seconds") >= 0
    assert value(after, "vidseek_catalog_up") == 1
    jobs = runtime.catalog.job_status_counts()
    assert (jobs[Status.done], jobs[Status.failed]) == (1, 2)
    for status, count in jobs.items():
        assert value(after, "vidseek_jobs", status=status.value) == count, status

    # Ingestion: the frames the ViT saw, the time it took, and the undecodable files by kind.
    frames = sum(s.frame_count for s in runtime.catalog.segments_of(video_id))
    assert delta("vidseek_ingest_frames_encoded_total") == frames > 0
    assert delta("vidseek_ingest_encode_seconds_total") > 0
    assert delta("vidseek_ingest_decode_errors_total", kind="not_a_container") == 1
    assert delta("vidseek_ingest_decode_errors_total", kind="empty") == 1
    assert delta("vidseek_ingest_decode_errors_total") == 2


def test_metrics_need_the_key_when_reads_are_protected(settings: Settings) -> None:
    client = create_app(build_runtime(settings.with_overrides(api_key="k", protect_reads=True)).api_context()).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.get_json()["error"]["status"] == 401
    text = scrape(client, **{"X-API-Key": "k"})
    assert value(text, REQUESTS, route="/metrics", status="401") >= 1  # refused requests are counted too


def test_scrape_answers_when_the_catalog_is_down_and_refresh_age_counts_successes_only(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = open_catalog(settings)
    index = SegmentIndex(catalog, tmp_path / "index", "space", 4, refresh_seconds=0.0)
    collector = ServingStateCollector(catalog, index)
    assert value(render(collector).decode(), "vidseek_index_refresh_age_seconds") == 0  # absent: never refreshed
    index.refresh(force=True)
    time.sleep(0.2)

    def unreachable(*_args: object) -> None:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("the database is down"))

    monkeypatch.setattr(catalog, "tombstones_after", unreachable)
    monkeypatch.setattr(catalog, "job_status_counts", unreachable)
    with pytest.raises(OperationalError):
        index.refresh(force=True)
    text = render(collector).decode()
    assert value(text, "vidseek_index_refresh_age_seconds") >= 0.2  # the failed refresh did not reset it
    assert value(text, "vidseek_catalog_up") == 0 and "vidseek_jobs" not in text
    catalog.dispose()


def test_the_shared_folder_must_be_set_before_prometheus_client_loads() -> None:
    with pytest.raises(MetricsAlreadyStarted), shared_metrics_folder():
        pass  # this test process imported prometheus_client long ago


def process_counts(folder: Path, route: str) -> dict[int, float]:
    """Requests to ``route`` recorded by each process in the multiprocess folder, by pid."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        counts[pid] = sum(v for key, v, _, _ in MmapedDict.read_all_values_from_file(str(path))
                          if (parsed := json.loads(key))[1] == REQUESTS and parsed[2].get("route") == route)
    return counts


def scrape_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def test_serve_adds_up_the_metrics_of_its_processes(settings: Settings, tmp_path: Path) -> None:
    """Two gunicorn processes record into one fresh folder; whichever answers a scrape reports their sum,
    a process that exits keeps its counts in it, and the folder goes when the server stops."""
    upgrade(settings.resolved_database_url)  # both processes find the schema in place
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    procs = Processes({**settings_env(settings), "TMPDIR": str(temp)}, tmp_path)
    base, route = f"http://127.0.0.1:{port}", "/api/library"
    try:
        procs.start("api", "serve", "--port", str(port), "--workers", "2", "--threads", "2")
        wait_for_api(procs, base)
        (folder,) = temp.glob("vidseek-metrics-*")
        sent = 0
        while sum(1 for n in process_counts(folder, route).values() if n) < 2:  # until both processes answered some
            assert sent < 400, process_counts(folder, route)
            get_json(base + route)
            sent += 1
        counts = process_counts(folder, route)
        assert sum(counts.values()) == sent and max(counts.values()) < sent
        for _ in range(6):  # every scrape, whichever process answers it, reports the total
            assert value(scrape_url(f"{base}/metrics"), REQUESTS, route=route, status="200") == sent

        os.kill(max(counts, key=counts.get), signal.SIGTERM)  # gunicorn replaces the process
        wait_until(lambda: len(process_counts(folder, route)) == 3, 120, "gunicorn to start a replacement process")
        assert folder.is_dir()
        assert value(scrape_url(f"{base}/metrics"), REQUESTS, route=route, status="200") == sent
    finally:
        procs.stop_all()
    assert not list(temp.glob("vidseek-metrics-*")), "the run's metrics folder outlived it"


def test_worker_metrics_port_serves_its_pool_processes_ingestion(settings: Settings, redis_url: str,
                                                                 samples_dir: Path, tmp_path: Path) -> None:
    with temporary_database("vidseek_metrics") as url:
        worker_settings = settings.with_overrides(database_url=url, broker_url=redis_url,
                                                  task_queue=f"metrics-{uuid.uuid4().hex[:8]}")
        upgrade(url)
        catalog = Catalog(url)
        queue = CeleryQueue(make_celery(worker_settings))
        port = free_port()
        with running_worker(worker_settings, tmp_path / "worker.log", "--metrics-port", str(port)):
            good = catalog.create_job(samples_dir / "stripes.mp4")
            queue.enqueue(good.id)
            assert wait_for(catalog, good.id, timeout=120) is Status.done, (tmp_path / "worker.log").read_text()[-3000:]
            bad = tmp_path / "media" / "garbage.mp4"
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_bytes(GARBAGE)
            failed = catalog.create_job(bad)
            queue.enqueue(failed.id)
            assert wait_for(catalog, failed.id, timeout=60) is Status.failed
            text = scrape_url(f"http://127.0.0.1:{port}/metrics")
        frames = sum(s.frame_count for s in catalog.segments_of(catalog.get_job(good.id).video_id))
        catalog.dispose()
    # The pool process encoded; the worker's main process serves the port: the numbers went through the folder.
    assert value(text, "vidseek_ingest_frames_encoded_total") == frames > 0
    assert value(text, "vidseek_ingest_encode_seconds_total") > 0
    assert value(text, "vidseek_ingest_decode_errors_total", kind="not_a_container") == 1


SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_the_grafana_dashboard_charts_exported_series(settings: Settings, tmp_path: Path) -> None:
    catalog = open_catalog(settings)
    index = SegmentIndex(catalog, tmp_path / "index", "space", 4)
    index.refresh(force=True)
    families = list(metrics_registry(ServingStateCollector(catalog, index)).collect())
    exported = {f.name + suffix for f in families for suffix in SERIES_SUFFIXES.get(f.type, ())}
    dashboard = json.loads((REPO / "deploy" / "grafana-vidseek.json").read_text())
    charts = [p for p in dashboard["panels"] if p["type"] != "row"]
    charted = {name for p in charts for t in p["targets"] for name in re.findall(r"\bvidseek_\w+", t["expr"])}
    assert charted <= exported, charted - exported
    vidseek = {f.name for f in families if f.name.startswith("vidseek_")}
    assert {name for name in vidseek if not any(c.startswith(name) for c in charted)} == set()  # every metric is charted
    catalog.dispose()
