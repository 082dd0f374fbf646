"""The web page as people use it, in a real headless Chromium (Debian's package): phone, tablet and
desktop widths with no horizontal scrolling, touch, every state (loading, empty library, no results,
errors, server gone), result cards, the library (paged, failures, delete with the key), upload with live
job progress, keyboard-only use, and axe-core (``axe-playwright-python``, which ships axe-core: no network)
finding no serious or critical accessibility violation; titles and tags edited in the library, then found
by a hybrid search.

Screenshots of each state are written under pytest's tmp path (the folder is printed) for review.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from indexer.service import build_runtime, image_encoder
from search.api import create_app
from search.api.context import ApiContext
from search.query import QueryService
from search.settings import Settings
from tests.conftest import TINY_CONFIG_DIR, TINY_MODEL
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

KEY = "page-test-key"
WIDTHS = (390, 768, 1280)
SLOW_QUERY = "a slow query"  # the test server takes 2 s to encode it: the loading state shows


@contextmanager
def serve(context: ApiContext) -> Iterator[tuple[str, object]]:
    httpd = make_server("127.0.0.1", 0, create_app(context), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def page_settings(root: Path, samples_dir: Path, checkpoint: Path, **changes) -> Settings:
    (root / "media").mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=root / "data", media_roots=(samples_dir, root / "media"), model=TINY_MODEL,
                    pretrained=str(checkpoint), model_config_dir=TINY_CONFIG_DIR, device="cpu",
                    index_refresh_seconds=0.0, log_format="text", **changes)


def context_with_slow_query(runtime) -> ApiContext:
    def encode(q: str):
        if q == SLOW_QUERY:
            time.sleep(2.0)
        return runtime.backbone.encode_text([q])[0].numpy()

    context = runtime.api_context()
    context.queries = QueryService(runtime.catalog, runtime.index, encode, reranking=runtime.queries.reranking,
                                   encode_image=image_encoder(runtime.backbone))
    return context


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screens")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path, tiny_checkpoint: Path) -> Iterator[str]:
    """A served library with the API key set: three_scenes, red_ball.mp4, and red_ball.mkv (another video with
    the same stem), plus a file that could not be indexed; no summaries (late reranking can do nothing)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (make test installs it)")
    root = tmp_path_factory.mktemp("library")
    settings = page_settings(root, samples_dir, tiny_checkpoint, api_key=KEY)
    runtime = build_runtime(settings)
    (root / "media" / "red_ball.mkv").write_bytes((samples_dir / "stripes.mp4").read_bytes())
    (root / "media" / "holiday.mp4").write_text("not a video at all\n" * 20)
    for path in (samples_dir / "three_scenes.mp4", samples_dir / "red_ball.mp4", root / "media" / "red_ball.mkv",
                 root / "media" / "holiday.mp4"):
        runtime.ingestor().run_job(runtime.catalog.create_job(path).id)
    context = context_with_slow_query(runtime)
    context.banner = ("The CLIP weights could not be loaded (https://huggingface.co/timm/vit_base_patch32_clip_224."
                      "openai/resolve/main/open_clip_pytorch_model.bin): results are meaningless.")  # must wrap on phones
    with serve(context) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, width: int, touch: bool = False):
    context = browser.new_context(viewport={"width": width, "height": 800 if width > 500 else 844},
                                  has_touch=touch, is_mobile=touch, device_scale_factor=2 if touch else 1)
    page = context.new_page()
    page.not_found = []  # every 404 the page meets (e.g. /favicon.ico)
    page.on("response", lambda r: r.status == 404 and page.not_found.append(r.url))
    return page


def fits_width(page, width: int) -> None:
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
    assert sizes == [width, width, width], f"document is {sizes[0]} px wide at a {width} px viewport"


def reachable(page, selector: str, width: int, min_height: float = 32) -> None:
    """The element is inside the viewport, tall enough to tap, and nothing covers its middle."""
    box = page.locator(selector).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
    assert box["height"] >= min_height, (selector, box)
    hit = page.evaluate(
        "([sel, x, y]) => { const e = document.elementFromPoint(x, y); return !!e && e.closest(sel) !== null; }",
        [selector, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    assert hit, f"{selector} is covered by another element"


def no_serious_violations(page, what: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in violations if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on {what}: {bad}"


def search(page, query: str) -> None:
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_selector("#results .card")


def wait_playing_near(page, seconds: float) -> None:
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1", timeout=20_000)
    page.wait_for_function(f"() => Math.abs(document.querySelector('#player').currentTime - {seconds}) < 1.0", timeout=20_000)


@pytest.mark.parametrize("width", WIDTHS)
def test_layout_fits_phones_tablets_and_desktops(browser, library: str, shots: Path, width: int) -> None:
    page = new_page(browser, width)
    page.goto(library + "/")
    page.wait_for_function("() => /searchable/.test(document.querySelector('#library-count').textContent)")
    assert page.inner_text("#library-count").startswith("3 videos searchable") and "1 could not be indexed" in page.inner_text("#library-count")
    fits_width(page, width)
    banner = page.locator("#banner").bounding_box()
    assert banner["width"] <= width and page.locator("#banner").evaluate("b => b.scrollWidth <= b.clientWidth")
    for control in ("#query", "#rerank", "#mode", "#search-form button[type=submit]", "#nav-library"):
        reachable(page, control, width)
    reachable(page, ".model-info", width, min_height=10)  # model (and precision) labels: on screen, not covered
    assert page.locator(".model-info .model").first.inner_text().startswith(TINY_MODEL)  # axe checks their contrast
    page.screenshot(path=str(shots / f"landing-{width}.png"), full_page=True)
    no_serious_violations(page, f"landing at {width} px")

    search(page, "a red ball")
    fits_width(page, width)
    lefts = page.locator("#results .card").evaluate_all("cards => cards.map(c => Math.round(c.getBoundingClientRect().left))")
    if width < 600:
        assert len(set(lefts)) == 1, "cards are in one column on a phone"
    else:
        assert len(set(lefts)) > 1, "cards share rows from tablets up"
    page.screenshot(path=str(shots / f"results-{width}.png"), full_page=True)
    no_serious_violations(page, f"results at {width} px")

    page.locator("#results .card").nth(0).click()
    wait_playing_near(page, float(page.locator("#results .card").nth(0).get_attribute("data-start")))
    box = page.locator("#player").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    fits_width(page, width)
    page.screenshot(path=str(shots / f"player-{width}.png"))
    no_serious_violations(page, f"player open at {width} px")
    assert page.not_found == [], page.not_found  # the favicon is served
    page.context.close()


def test_result_cards(browser, library: str, shots: Path) -> None:
    page = new_page(browser, 1280)
    page.goto(library + "/")
    search(page, "a red ball")
    assert page.title() == "“a red ball” — vidseek"
    titles = page.locator("#results .card .title").all_inner_texts()
    # two videos with the stem red_ball are told apart by their file names; unique titles stay plain
    assert sorted(t for t in titles if t.startswith("red_ball")) == ["red_ball.mkv", "red_ball.mp4"] and "three_scenes" in titles
    three = page.locator("#results .card", has=page.locator(".title", has_text="three_scenes"))
    chips = three.locator(".moments button").all_inner_texts()
    seconds = [int(m) * 60 + int(s) for m, s in (c.split(":") for c in chips)]
    assert len(seconds) == 3 and seconds == sorted(seconds), chips  # every segment, in time order
    assert three.locator(".moments button.best").count() == 1
    assert page.locator("#results .card img").first.evaluate("img => getComputedStyle(img).objectFit") == "contain"
    # late interaction needs stored summaries, and this library has none: not offered, and the page says why
    assert page.locator("#rerank option[value=late]").is_disabled()
    assert "no video has a token summary" in page.locator("#rerank option[value=late]").get_attribute("title")
    assert page.locator("#rerank").input_value() == "none"
    chip = three.locator(".moments button").nth(2)
    chip.click()
    wait_playing_near(page, seconds[2])
    page.screenshot(path=str(shots / "cards-1280.png"), full_page=True)
    page.context.close()


def test_states_loading_errors_and_empty_query(browser, library: str, shots: Path) -> None:
    page = new_page(browser, 390)
    page.goto(library + "/")
    page.fill("#query", SLOW_QUERY)
    page.press("#query", "Enter")
    page.wait_for_function("() => /Searching for .* [1-9]\\.\\d s/.test(document.querySelector('#status').textContent)")
    assert page.locator("#status.busy").count() == 1 and page.locator("#results[aria-busy=true]").count() == 1
    page.screenshot(path=str(shots / "loading-390.png"))
    page.wait_for_selector("#results .card", timeout=20_000)

    # empty query: results and the address bar are cleared
    assert "?q=" in page.url
    page.fill("#query", "  ")
    page.press("#query", "Enter")
    assert page.locator("#results .card").count() == 0 and "?q=" not in page.url and page.title() == "vidseek"
    assert "Type what you are looking for" in page.inner_text("#status") and page.is_visible("#landing")

    # an over-long query (more than the input takes, from the address bar): an alert with the API's message
    page.goto(library + "/?q=" + "a" * 1001)
    page.wait_for_selector("#alert:not([hidden])")
    assert page.inner_text("#alert .alert-title") == "Search failed. The server cannot run this request."
    assert "longer than 1000 characters" in page.inner_text("#alert .alert-detail")
    assert page.locator("#alert").get_attribute("role") == "alert"
    fits_width(page, 390)
    page.screenshot(path=str(shots / "error-long-query-390.png"))
    no_serious_violations(page, "the over-long query error")
    page.context.close()


def test_empty_library_no_results_and_server_gone(browser, tmp_path: Path, samples_dir: Path, tiny_checkpoint: Path,
                                                  shots: Path) -> None:
    runtime = build_runtime(page_settings(tmp_path, samples_dir, tiny_checkpoint))
    with serve(runtime.api_context()) as (url, httpd):
        page = new_page(browser, 390)
        page.goto(url + "/")
        page.wait_for_selector("#empty-library:not([hidden])")
        assert "vidseek ingest" in page.inner_text("#empty-library")
        assert page.inner_text("#library-count").startswith("0 videos searchable")
        page.screenshot(path=str(shots / "empty-library-390.png"), full_page=True)
        no_serious_violations(page, "the empty library")
        page.fill("#query", "anything at all")
        page.press("#query", "Enter")
        page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('No videos match')")
        assert page.is_visible("#empty-library")
        page.screenshot(path=str(shots / "no-results-390.png"), full_page=True)

        for i in range(25):  # queued videos (never ingested): the library pages them 20 at a time
            runtime.catalog.get_or_create_video(tmp_path / "media" / f"clip{i:02d}.mp4", f"{i:064x}", 1000)
        page.click("#nav-library")
        page.wait_for_selector("#video-list .video-row")
        assert page.locator(".video-row").count() == 20 and page.inner_text("#page-info") == "Page 1 of 2"
        assert page.locator(".video-row .badge.queued").count() == 20 and page.is_disabled("#page-prev")
        page.click("#page-next")
        page.wait_for_function("() => document.querySelector('#page-info').textContent === 'Page 2 of 2'")
        assert page.locator(".video-row").count() == 5 and page.is_disabled("#page-next")
        assert page.locator(".video-row .name").last.inner_text() == "clip00.mp4"  # newest first
        fits_width(page, 390)
        page.screenshot(path=str(shots / "library-page2-390.png"), full_page=True)
        page.click("#nav-search")
        httpd.shutdown()
        httpd.server_close()  # the server goes away mid-session
        page.fill("#query", "anything else")
        page.press("#query", "Enter")
        page.wait_for_selector("#alert:not([hidden])")
        assert page.inner_text("#alert .alert-title") == "Search failed. Cannot reach the vidseek server — is it running?"
        assert page.locator("#status.busy").count() == 0
        fits_width(page, 390)
        page.screenshot(path=str(shots / "server-gone-390.png"), full_page=True)
        no_serious_violations(page, "the server-gone error")
        page.context.close()


def test_keyboard_only_search_and_play(browser, library: str) -> None:
    page = new_page(browser, 1280)
    page.goto(library + "/")
    assert page.evaluate("() => document.activeElement.id") == "query"  # the search box has focus
    page.keyboard.type("the three scenes")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    for _ in range(15):  # Tab to the first result
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.matches('#results .card .play')"):
            break
    else:
        raise AssertionError("Tab never reached a result")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible
    start = float(page.locator("#results .card").nth(0).get_attribute("data-start"))
    page.keyboard.press("Enter")
    wait_playing_near(page, start)
    assert page.is_visible("#player-pane")
    page.keyboard.press("Escape")
    assert page.is_hidden("#player-pane")
    assert page.evaluate("() => document.activeElement.matches('#results .card .play')")  # focus returns to the card
    page.context.close()


def test_library_lists_failures_without_server_details_and_deletes_with_the_key(browser, library: str, shots: Path) -> None:
    page = new_page(browser, 768)
    page.on("dialog", lambda d: d.accept())
    page.goto(library + "/#library")
    page.wait_for_selector("#video-list .video-row")
    assert page.title() == "Library — vidseek"
    rows = page.locator("#video-list .video-row")
    assert rows.count() == 4
    three = page.locator(".video-row", has=page.locator(".name", has_text="three_scenes.mp4"))
    facts = three.locator(".facts").inner_text()
    assert "done" in facts and "0:36" in facts and "3 segments" in facts and "indexed " in facts
    failed = page.locator(".video-row", has=page.locator(".badge.failed"))
    reason = failed.locator(".reason").inner_text()
    assert reason.startswith("Could not be indexed: ") and "readable video container" in reason
    assert "Errno" not in reason and not re.search(r"/\w", reason), reason  # no errno values, no server paths
    fits_width(page, 768)
    page.screenshot(path=str(shots / "library-768.png"), full_page=True)
    no_serious_violations(page, "the library")

    failed.locator("button.delete").click()  # the key is needed, and asked for
    page.wait_for_selector("#key-box:not([hidden])")
    assert page.evaluate("() => document.activeElement.id") == "api-key"
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    failed.locator("button.delete").click()
    page.wait_for_function("() => document.querySelectorAll('#video-list .video-row').length === 3")
    assert page.locator(".badge.failed").count() == 0
    page.context.close()


def test_upload_with_touch_at_phone_width_then_search_it(browser, library: str, samples_dir: Path, shots: Path) -> None:
    page = new_page(browser, 390, touch=True)
    page.goto(library + "/")
    page.wait_for_function("() => /searchable/.test(document.querySelector('#library-count').textContent)")
    page.tap("#query")
    page.keyboard.type("three scenes")
    page.tap("#search-form button[type=submit]")  # the Search button can be tapped
    page.wait_for_selector("#results .card")
    card = page.locator("#results .card").nth(0)
    start = float(card.get_attribute("data-start"))
    card.locator(".play").tap()
    wait_playing_near(page, start)

    page.tap("#nav-library")
    page.wait_for_selector("#video-list .video-row")
    fits_width(page, 390)
    with page.expect_file_chooser() as chooser:
        page.tap("label[for=file-input]")
    chooser.value.set_files(str(samples_dir / "snow.mp4"))
    page.wait_for_selector("#key-box:not([hidden])")  # a fresh tab has no key yet: asked for, upload waits
    page.tap("#api-key")
    page.keyboard.type(KEY)
    page.tap("#key-box button[type=submit]")
    page.wait_for_function("() => /indexed — searchable now/.test(document.querySelector('#uploads li').textContent)", timeout=120_000)
    page.screenshot(path=str(shots / "upload-done-390.png"), full_page=True)
    assert page.locator(".video-row .name", has_text="snow.mp4").count() == 1
    page.tap("#nav-search")
    page.fill("#query", "snow falling")
    page.tap("#search-form button[type=submit]")
    page.wait_for_selector("#results .card")
    assert any("snow" in t for t in page.locator("#results .card .title").all_inner_texts())
    page.context.close()


def test_search_by_a_picture_then_more_like_a_result(browser, library: str, shots: Path) -> None:
    """The Image button searches by a picture (multipart), with the words typed too when there are any;
    "More like this" on a card searches for moments like its matched one, which is left out."""
    import io

    import numpy as np
    from PIL import Image

    from indexer.samples import HEIGHT, SAMPLES, WIDTH

    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    stripes = next(s for s in SAMPLES if s.name == "stripes").paint(3.0, yy, xx)
    png = io.BytesIO()
    Image.fromarray(stripes).save(png, "PNG")
    page = new_page(browser, 390)
    page.goto(library + "/")
    page.wait_for_function("() => /searchable/.test(document.querySelector('#library-count').textContent)")
    reachable(page, "label[for=image-input]", 390)
    with page.expect_file_chooser() as chooser:
        page.click("label[for=image-input]")
    chooser.value.set_files(files=[{"name": "stripes.png", "mimeType": "image/png", "buffer": png.getvalue()}])
    page.wait_for_selector("#results .card")
    titles = page.locator("#results .card .title").all_inner_texts()
    assert set(titles[:2]) == {"red_ball.mkv", "three_scenes"}, titles  # the two videos showing stripes
    assert page.is_visible("#image-chip") and page.inner_text("#image-name") == "stripes.png"
    assert page.title() == "stripes.png — vidseek"
    fits_width(page, 390)
    page.screenshot(path=str(shots / "by-picture-390.png"), full_page=True)
    no_serious_violations(page, "results of a search by picture")

    three = page.locator("#results .card", has=page.locator(".title", has_text="three_scenes"))
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        three.locator("button.like").click()
    body = answer.value.json()
    source = body["query"].removeprefix("like segment ")
    assert body["query"].startswith("like segment ") and source.isdigit()
    page.wait_for_function("() => !document.querySelector('#status').classList.contains('busy')")
    assert f"?like={source}" in page.url and page.is_hidden("#player-pane")  # the click searched, it did not play
    assert page.locator("#results .card .title").first.inner_text() == "red_ball.mkv"  # the stripes elsewhere
    assert int(source) not in {h["segment_id"] for h in body["hits"]}
    page.screenshot(path=str(shots / "more-like-this-390.png"), full_page=True)

    page.click("#image-clear")  # without the picture and with no words: back to the start
    assert page.is_hidden("#image-chip") and page.is_visible("#landing")


def test_edit_title_and_tags_then_find_them_by_hybrid_search(browser, library: str, shots: Path) -> None:
    page = new_page(browser, 390)
    page.goto(library + "/#library")
    page.wait_for_selector("#video-list .video-row")
    row = page.locator(".video-row", has=page.locator(".name", has_text="three_scenes.mp4"))
    row.locator("button.edit").click()  # the key is needed, and asked for
    page.wait_for_selector("#key-box:not([hidden])")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    row.locator("button.edit").click()
    editor = row.locator(".edit-form")
    assert editor.locator("input").nth(0).input_value() == "three_scenes"
    editor.locator("input").nth(0).fill("Harbour at night")
    editor.locator("input").nth(1).fill(" Boats, EVENING ,")
    fits_width(page, 390)
    no_serious_violations(page, "the title and tags form")
    editor.locator("button[type=submit]").click()
    page.wait_for_function("() => document.querySelectorAll('.video-row .tag').length === 2")
    assert row.locator(".tag").all_inner_texts() == ["boats", "evening"]
    assert row.locator(".video-title").inner_text() == "Harbour at night" and row.locator(".edit-form").count() == 0
    page.screenshot(path=str(shots / "library-tags-390.png"), full_page=True)

    page.click("#nav-search")
    page.select_option("#mode", "hybrid")
    search(page, "boats in a harbour")
    first = page.locator("#results .card").nth(0)
    assert first.locator(".title").inner_text() == "Harbour at night"
    assert first.locator(".signals").inner_text() == "visual + title/tags"
    assert "mode=hybrid" in page.url and page.locator("#results .card .signals").count() == page.locator("#results .card").count()
    fits_width(page, 390)
    page.screenshot(path=str(shots / "hybrid-results-390.png"), full_page=True)
    no_serious_violations(page, "hybrid results")
    page.goto(page.url)  # the address brings the mode back
    page.wait_for_selector("#results .card .signals")
    assert page.locator("#mode").input_value() == "hybrid"
    page.select_option("#mode", "vector")  # changing the mode searches again
    page.wait_for_function("() => !location.search.includes('mode=hybrid') && document.querySelector('#results .card')")
    page.wait_for_function("() => document.querySelectorAll('#results .card .signals').length === 0")
    page.context.close()
