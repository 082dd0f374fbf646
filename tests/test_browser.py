"""The web UI in a real headless Chromium (Debian's package): search, see cards, click one, and
the page's video element is positioned at the matched segment's start; then switch the rerank toggle
to late interaction and see both scores and the refined moment on the cards."""

import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from indexer.decode import center_crop, iter_sampled_frames
from indexer.service import build_runtime
from search.api import create_app
from search.query import QueryService
from search.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture()
def server(settings: Settings, samples_dir: Path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (make test installs it)")
    runtime = build_runtime(settings.with_overrides(summary="holitom", rerank="none"))  # summaries stored, toggle off
    for name in ("red_ball", "stripes", "three_scenes"):
        job = runtime.catalog.create_job(samples_dir / f"{name}.mp4")
        runtime.ingestor().run_job(job.id)
    # a query whose embedding is that of 12-24 s of three_scenes: its best moment is known
    size = runtime.backbone.image_size
    frames = [f for f in iter_sampled_frames(samples_dir / "three_scenes.mp4", 1.0, short_side=size) if 12 <= f.time < 24]
    pixels = runtime.backbone.pixels_from_frames(np.stack([center_crop(f.image, size) for f in frames]))
    target = runtime.encoder.encode(pixels[None]).embeddings[0].numpy()
    encode = lambda q: target if q == "the stripes scene" else runtime.backbone.encode_text([q])[0].numpy()  # noqa: E731
    context = runtime.api_context()
    context.queries = QueryService(runtime.catalog, runtime.index, encode, reranking=runtime.queries.reranking)
    httpd = make_server("127.0.0.1", 0, create_app(context), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def clock(seconds: float) -> str:
    """The page's m:ss rendering of a time."""
    s = math.floor(max(0.0, seconds) + 0.5)  # Math.round
    return f"{s // 60}:{s % 60:02d}"


# True once the image has loaded with pixels, False if it fails: waits for a load still under way
# (the card appears before its thumbnail's bytes arrive).
IMAGE_LOADED = """img => img.complete ? img.naturalWidth > 0 : new Promise(done => {
    img.addEventListener("load", () => done(img.naturalWidth > 0));
    img.addEventListener("error", () => done(false));
})"""


def test_search_click_plays_at_the_matched_moment(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server + "/")
        page.fill("#query", "the stripes scene")
        page.press("#query", "Enter")
        page.wait_for_selector(".card")
        cards = page.locator(".card")
        assert cards.count() == 3
        first = cards.nth(0)
        assert first.locator(".title").inner_text() == "three_scenes"
        assert first.locator(".range").inner_text() == "0:12–0:24"
        assert first.locator("img").evaluate(IMAGE_LOADED)
        first.click()
        page.wait_for_function("() => document.querySelector('#player').readyState >= 1", timeout=20_000)
        page.wait_for_function("() => Math.abs(document.querySelector('#player').currentTime - 12) < 1.0", timeout=20_000)
        assert "three_scenes" in page.inner_text("#now-playing")
        assert "?q=the%20stripes%20scene" in page.url
        page.screenshot(path=str(tmp_path / "ui.png"))
        assert first.locator(".rerank-score").count() == 0
        assert page.locator("#rerank option[value=llm]").is_disabled()  # no video LLM configured

        page.select_option("#rerank", "late")  # re-runs the search
        page.wait_for_selector(".card .rerank-score")
        assert "late reranked 3 of 3" in page.inner_text("#status") and "rerank=late" in page.url
        api = page.request.get(server + "/api/search?q=the%20stripes%20scene&k=12&rerank=late").json()
        top = api["hits"][0]
        card = page.locator(".card").nth(0)
        assert card.locator(".title").inner_text() == top["title"]
        assert card.locator(".score").inner_text() == f"{top['first_stage_score']:.3f}"
        assert card.locator(".rerank-score").inner_text() == f"→ {top['rerank_score']:.3f}"
        assert card.locator(".range").inner_text() == f"{clock(top['start'])}–{clock(top['end'])}"
        page.screenshot(path=str(tmp_path / "ui-rerank.png"))

        # a 1000-character query: searched by POST, and kept out of the address bar (too long a URL)
        page.fill("#query", "条纹" * 500)
        page.press("#query", "Enter")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('videos in')")
        assert page.locator(".card").count() == 3 and "?q=" not in page.url

        page.fill("#query", "   ")
        page.press("#query", "Enter")
        assert "Type what you are looking for" in page.inner_text("#status")
        browser.close()
