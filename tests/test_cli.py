"""The ``vidseek`` console script as a user runs it: ingest (resumable, skipping known videos),
search, index rebuild, db upgrade, and the demo command serving the UI."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from search.settings import Settings
from tests.conftest import REPO, settings_env


def vidseek(settings: Settings, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args],
        cwd=REPO, env={**settings_env(settings), **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def test_ingest_search_rebuild(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "nested").mkdir(parents=True)
    for name in ("red_ball.mp4", "snow.mp4"):
        shutil.copy(samples_dir / name, media / "nested" / name)
    (media / "notes.txt").write_text("not a video, and not picked up from a folder")
    (media / "broken.mp4").write_bytes(b"garbage" * 100)

    first = vidseek(settings, "ingest", str(media))
    assert first.returncode == 1, first.stderr  # one bad file
    assert "indexed 2, already indexed 0, failed 1" in first.stdout
    assert "broken.mp4" in first.stderr and "not a readable video" in first.stderr
    assert "ingesting" in first.stderr  # the progress bar

    again = vidseek(settings, "ingest", str(media / "nested"))
    assert again.returncode == 0 and "indexed 0, already indexed 2" in again.stdout

    outside = vidseek(settings, "ingest", "/etc/hostname")
    assert outside.returncode == 1 and "outside the media roots" in outside.stderr

    found = vidseek(settings, "search", "white snow", "-k", "2")
    assert found.returncode == 0 and found.stdout.count("[0.0s–8.0s]") == 2

    shutil.rmtree(settings.resolved_index_dir, ignore_errors=True)
    rebuilt = vidseek(settings, "index", "rebuild")
    assert rebuilt.returncode == 0 and "2 segments" in rebuilt.stdout
    state = json.loads((settings.resolved_index_dir / "segments.json").read_text())
    assert state["kind"] == "flat" and state["segment_watermark"] >= 2

    db = vidseek(settings, "db", "current")
    assert db.returncode == 0 and "revision" in db.stdout


def test_configuration_errors_are_reported(settings: Settings) -> None:
    result = vidseek(settings, "db", "current", env={"VIDSEEK_ENCODER": "turbo"})
    assert result.returncode == 2 and "VIDSEEK_ENCODER" in result.stderr
    result = vidseek(settings, "search", "x", env={"VIDSEEK_PRETRAINED": "/no/such/file.bin"})
    assert result.returncode == 2 and "neither a file nor a pretrained tag" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_ingests_samples_and_serves_the_ui(settings: Settings, tmp_path: Path) -> None:
    """The README's first command runs `vidseek demo`: samples ingested, UI + API on localhost.
    With unreachable weights it says how to supply them and continues on random weights."""
    import huggingface_hub  # noqa: F401  (only to locate the offline switch below)

    port = free_port()
    env = {**settings_env(settings), "VIDSEEK_PRETRAINED": "openai", "HF_HUB_OFFLINE": "1"}
    env["VIDSEEK_DATA_DIR"] = str(tmp_path / "demo-data")
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", "demo", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                    health = json.load(resp)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.log").read_text()[-3000:]
                time.sleep(0.5)
        assert health["status"] == "ok" and health["index_segments"] >= 8
        with urllib.request.urlopen(f"{base}/api/search?q=red+ball&k=20") as resp:
            hits = json.load(resp)["hits"]
        titles = {h["title"] for h in hits}
        assert {"red_ball", "three_scenes", "snow"} <= titles
        with urllib.request.urlopen(f"{base}/") as resp:
            page = resp.read().decode()
        assert "random model weights" in page  # the banner explains why results are meaningless
        log.seek(0)
        output = log.read()
        assert "VIDSEEK_PRETRAINED=/path/to/open_clip_pytorch_model.bin" in output
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
