"""The web page tells the user which videos could not be indexed, and why (headless Chromium)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from indexer.service import build_runtime
from search.api import create_app
from search.settings import Settings
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser


def test_failed_videos_are_listed_with_their_reason(settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (make test installs it)")
    from playwright.sync_api import sync_playwright

    runtime = build_runtime(settings)
    bad = tmp_path / "media" / "holiday.mp4"
    bad.parent.mkdir()
    bad.write_text("not a video at all\n" * 20)
    for path in (samples_dir / "snow.mp4", bad):
        runtime.ingestor().run_job(runtime.catalog.create_job(path).id)
    httpd = make_server("127.0.0.1", 0, create_app(runtime.api_context()), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_port}/")
            page.wait_for_selector("#failures:not([hidden])")
            assert page.inner_text("#failures summary") == "1 video could not be indexed"
            page.click("#failures summary")
            item = page.inner_text("#failures li")
            assert item.startswith("holiday: ") and "not a readable video container" in item
            browser.close()
    finally:
        httpd.shutdown()
