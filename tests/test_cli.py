"""The ``vidseek`` console script as a user runs it: ingest (resumable, skipping known videos),
search, index rebuild, db upgrade, and the demo command serving the UI."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from indexer.cli import interactive_logging
from search.settings import Settings
from tests.conftest import REPO, settings_env


def vidseek(settings: Settings, *args: str, env: dict | None = None, timeout: float = 300,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args],
        cwd=cwd, env={**settings_env(settings), **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


# Weights that cannot load: a command that got as far as loading the model would say so.
UNLOADABLE = {"VIDSEEK_PRETRAINED": "/no/such/weights.bin"}


def test_a_bad_query_is_refused_before_the_model_loads(settings: Settings) -> None:
    for args, reason in ((["search", ""], "query is empty"), (["search", "x", "-k", "0"], "k must be between 1")):
        result = vidseek(settings, *args, env=UNLOADABLE)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and reason in result.stderr
        assert "Traceback" not in result.stderr and "\n" not in result.stderr.strip()  # one line


def test_ingest_checks_paths_before_the_model_loads(settings: Settings) -> None:
    result = vidseek(settings, "ingest", "/etc/passwd", env=UNLOADABLE, timeout=60)
    assert result.returncode == 1 and "outside the media roots" in result.stderr
    assert "weights" not in result.stderr  # the model was never loaded


def test_relative_cli_paths_resolve_against_the_working_directory(settings: Settings, samples_dir: Path,
                                                                 tmp_path: Path) -> None:
    """With the media root /tmp/x/m and the working directory /tmp/x, `ingest m/clips` means /tmp/x/m/clips
    (not /tmp/x/m/m/clips, as when relative paths were taken from the first media root)."""
    media = tmp_path / "m"
    (media / "clips").mkdir(parents=True)
    shutil.copy(samples_dir / "snow.mp4", media / "clips" / "snow.mp4")
    result = vidseek(settings, "ingest", "m/clips", env={"VIDSEEK_MEDIA_ROOTS": str(media)}, cwd=tmp_path)
    assert result.returncode == 0 and "indexed 1, already indexed 0, failed 0, rejected 0" in result.stdout, result.stderr
    escaped = vidseek(settings, "ingest", "other.mp4", env={"VIDSEEK_MEDIA_ROOTS": str(media)}, cwd=tmp_path)
    assert escaped.returncode == 1 and "outside the media roots" in escaped.stderr  # tmp/other.mp4, not m/other.mp4


def test_interactive_commands_log_text_at_warning_on_a_terminal(settings: Settings) -> None:
    """`vidseek search` at a terminal prints the answer, not JSON log lines; services keep JSON."""
    import pty

    env = {k: v for k, v in settings_env(settings).items() if k not in ("VIDSEEK_LOG_FORMAT", "VIDSEEK_LOG_LEVEL")}
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "indexer.cli", "search", "snow", "-k", "1"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=300)
        os.close(secondary)
        terminal = _read_all(primary)
    finally:
        os.close(primary)
    assert result.returncode == 0 and "ms)" in result.stdout
    assert '{"ts"' not in terminal and " info " not in f" {terminal}", terminal
    piped = subprocess.run([sys.executable, "-m", "indexer.cli", "search", "snow", "-k", "1"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and '{"ts"' in piped.stderr  # not a terminal: JSON, as before

    on_terminal = interactive_logging(settings, "search", {}, terminal=True)
    assert (on_terminal.log_format, on_terminal.log_level) == ("text", "WARNING")
    chosen = interactive_logging(settings, "ingest", {"VIDSEEK_LOG_LEVEL": "DEBUG", "VIDSEEK_LOG_FORMAT": "json"}, True)
    assert (chosen.log_format, chosen.log_level) == (settings.log_format, settings.log_level)
    for service in ("serve", "worker", "beat"):
        assert interactive_logging(settings, service, {}, terminal=True) is settings


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_demo_on_a_taken_port_says_so_before_ingesting(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = vidseek(settings, "demo", env={"VIDSEEK_PORT": str(port), "VIDSEEK_DATA_DIR": str(tmp_path / "d")},
                         timeout=120)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "VIDSEEK_PORT" in result.stderr and "serving on" not in result.stdout and "ingesting" not in result.stdout


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
    env["VIDSEEK_PORT"] = str(port)
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "indexer.cli", "demo"],
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
        assert f"vidseek is serving on http://127.0.0.1:{port}/" in output
        # the README's way to query the demo's random-weights catalog from the shell
        cli = subprocess.run([sys.executable, "-m", "indexer.cli", "search", "red ball", "-k", "20"], cwd=REPO,
                             env={**env, "VIDSEEK_PRETRAINED": "random"}, capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0 and "red_ball" in cli.stdout, cli.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
