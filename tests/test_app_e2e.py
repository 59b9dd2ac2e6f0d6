"""The app in a real browser: what a user clicks, streamed back into the page, down to the downloaded zip.

test_app.py covers the endpoints through gradio_client; this drives the page itself (Playwright on Debian's
chromium), so the layout, the streamed plotly heatmap and the download button are exercised as users see them.
"""
from __future__ import annotations

import glob
import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from conftest import APP_SESSION_DIRS
from playwright.sync_api import Page, expect, sync_playwright

from adaptive_dd.app_handlers import COLOUR_STOPS
from adaptive_dd.config import DistillConfig


CHROMIUM = Path("/usr/bin/chromium")
# A system browser: `playwright install` downloads its own, which needs a network this project does not assume.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BUDGET, IPC, CLASSES = 3, 2, ["0", "1"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _open(browser, app_url: str, width: int = 1400, height: int = 1000) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own 5 s default
    page.goto(app_url)
    expect(page.get_by_role("button", name="Run BO")).to_be_visible()
    return page


@pytest.fixture
def page(browser, app_url):
    page = _open(browser, app_url)
    yield page
    page.close()


def _set(page: Page, label: str, value: object) -> None:
    """Type into the visible control of that label (a slider's number box); Tab commits it like a user would."""
    box = page.get_by_label(label, exact=True).or_(page.get_by_label(f"number input for {label}", exact=True))
    box = box.filter(visible=True).first
    box.fill(str(value))
    box.press("Tab")


def _small_settings(page: Page) -> None:
    """A 3 x 3 grid, a tiny budget and few steps: the tiny models make each evaluation take milliseconds."""
    _set(page, "β grid (CFG scale)", "0, 1, 2")
    _set(page, "γ grid (img2img strength, in (0, 1])", "0.5, 0.7, 1.0")
    _set(page, "BO budget", BUDGET)
    _set(page, "steps (BO proxies take a share: see proxy steps)", 6)


def _gallery(page: Page, label: str):
    return page.get_by_test_id("block-label").filter(has_text=label).locator("..")


def _sources(gallery) -> list[str]:
    return [img.get_attribute("src") for img in gallery.locator("img").all()]


def test_explore_then_distill_and_download_in_the_browser(page: Page, tmp_path):
    expect(page.get_by_role("button", name="Run BO")).to_be_in_viewport()  # no scrolling to find it at 1400 x 1000
    page.get_by_label("class", exact=True).click()
    page.get_by_role("option", name="3", exact=True).click()
    _set(page, "m_seed (seed images)", 4)
    _small_settings(page)
    title = page.locator("#bo-heatmap .gtitle")
    expect(title).to_have_count(0)  # no heatmap before the run
    # Record the colour range of every frame the page draws while BO streams.
    page.evaluate("""() => { window.__ranges = []; window.__watch = new MutationObserver(() => {
        const el = document.querySelector('#bo-heatmap .js-plotly-plot');
        const t = el && el.data && el.data[0];
        if (t && (window.__ranges.length === 0 || window.__ranges.at(-1).frame !== el._fullLayout.title.text))
            window.__ranges.push({frame: el._fullLayout.title.text, zmin: t.zmin, zmax: t.zmax});
    }); window.__watch.observe(document.querySelector('#bo-heatmap'),
                               {subtree: true, childList: true, characterData: true, attributes: true}); }""")
    page.get_by_role("button", name="Run BO").click()
    expect(title).to_contain_text(re.compile(rf"\d/{BUDGET} evaluations"))  # early stopping may end it sooner
    expect(page.get_by_text("f_final")).to_be_visible()  # the readout of BatchDone: the final batch is drawn
    ranges = page.evaluate("() => { window.__watch.disconnect(); return window.__ranges; }")
    # Every frame the page drew (a fast run may draw only the last; test_app checks every streamed frame).
    stops = COLOUR_STOPS[DistillConfig().bo.objective]["mean"]
    assert ranges and {(r["zmin"], r["zmax"]) for r in ranges} == {(stops[0], stops[-1])}, ranges
    final = _gallery(page, "final (β*, γ*, repulsion)")
    expect(final.locator("img")).to_have_count(4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_e2e.png"), full_page=True)

    # Typing a lambda and pressing Enter redraws the final batch (no other control has to change).
    before = _sources(final)
    box = page.get_by_label("number input for λ (repulsion weight)", exact=True)
    box.fill("0")
    box.press("Enter")
    expect(page.get_by_text("λ = 0, bandwidth = auto")).to_be_visible()
    after = _sources(final)
    assert len(after) == 4 and after != before

    page.get_by_role("tab", name="Distill & export").click()
    for c in [str(i) for i in range(10) if str(i) not in CLASSES]:
        page.get_by_role("checkbox", name=c, exact=True).uncheck()
    _set(page, "IPC (images per class)", IPC)
    _set(page, "m_seed (per mini-batch)", IPC)
    _small_settings(page)
    page.get_by_role("button", name="Distill", exact=True).click()
    expect(page.get_by_text("Done:")).to_be_visible()
    expect(_gallery(page, "distilled images").locator("img")).to_have_count(IPC * len(CLASSES))  # the preview
    with page.expect_download() as download:
        page.get_by_role("button", name="Download zip").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)

    assert path.suffix == ".zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read(next(n for n in names if n.endswith("/manifest.json"))))
    for c in CLASSES:
        assert sum(f"/{c}/" in n and n.endswith(".png") for n in names) == IPC
    assert manifest["class_order"][:len(CLASSES)] == CLASSES and len(manifest["images"]) == IPC * len(CLASSES)
    assert manifest["config"]["bo"]["budget"] == BUDGET and manifest["config"]["sampler"]["steps"] == 6


def test_upload_needs_an_explicit_class_and_stop_says_so(page: Page, tmp_path):
    from PIL import Image

    class_picker = page.get_by_label("class", exact=True)
    expect(class_picker).to_be_visible()
    page.get_by_label("upload").check()
    expect(class_picker).to_be_hidden()  # the dataset's class picker is not the uploads' class
    upload_class = page.get_by_label("class of the uploaded images (required)")
    expect(upload_class).to_have_value("")
    expect(page.get_by_text("only what the backbone can generate: one of the backbone's classes: 0, 1, 2")) \
        .to_be_visible()
    path = tmp_path / "seven.png"
    Image.new("L", (8, 8), 200).save(path)
    page.locator("input[type=file]").set_input_files(str(path))
    pool = _gallery(page, "class train images / uploads")
    expect(pool.locator("img")).to_have_count(1)
    box = pool.locator("img").first.bounding_box()
    assert box["width"] <= 200  # one upload does not fill the gallery's width
    _small_settings(page)
    page.get_by_role("button", name="Run BO").click()
    expect(page.get_by_text("choose the class of the uploaded images (one of the backbone's classes: 0, 1")) \
        .to_be_visible()
    expect(page.locator("#bo-heatmap .gtitle")).to_have_count(0)  # nothing ran

    upload_class.click()
    page.get_by_role("option", name="7", exact=True).click()
    _set(page, "BO budget", 9)
    _set(page, "steps (BO proxies take a share: see proxy steps)", 60)
    page.get_by_role("button", name="Run BO").click()
    expect(page.locator("#bo-heatmap .gtitle")).to_contain_text("/9 evaluations")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#bo-readout")).to_contain_text("Stopped")  # "after k/9 evaluations" unless BO had finished


def test_phone_width_galleries_wrap_and_the_heatmap_title_fits(browser, app_url):
    before = set(glob.glob(APP_SESSION_DIRS))
    page = _open(browser, app_url, width=390, height=844)
    try:
        _set(page, "m_seed (seed images)", 10)
        _small_settings(page)
        page.get_by_role("button", name="Run BO").click()
        expect(page.get_by_text("f_final")).to_be_visible()
        final = _gallery(page, "final (β*, γ*, repulsion)")
        expect(final.locator("img")).to_have_count(10)
        for label in ("latest proxy images", "seeds", "final (β*, γ*, repulsion)"):
            images = _gallery(page, label).locator("img").all()
            assert images, label
            for img in images:  # not scrolled into view: that would scroll a clipped row sideways
                box = img.bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (label, box)
        title = page.locator("#bo-heatmap .gtitle")
        title.scroll_into_view_if_needed()
        plot, text = page.locator("#bo-heatmap .js-plotly-plot").bounding_box(), title.bounding_box()
        assert plot["x"] <= text["x"] and text["x"] + text["width"] <= plot["x"] + plot["width"]
        label = page.get_by_test_id("block-label").filter(has_text="GP posterior").bounding_box()
        assert text["y"] >= label["y"] + label["height"]  # the title sits below the block's label
        modebar = page.locator("#bo-heatmap .modebar-container")
        if modebar.count():  # shown on hover only; where it is, it must not cover the label
            bar = modebar.bounding_box()
            assert bar is None or bar["y"] >= label["y"] + label["height"] or bar["x"] >= label["x"] + label["width"]
        page.screenshot(path=str(ARTIFACTS / "app_e2e_390.png"), full_page=True)
    finally:
        page.close()
    mine = set(glob.glob(APP_SESSION_DIRS)) - before
    assert len(mine) == 1  # the page's own folder of served images
    deadline = time.monotonic() + 30
    while any(Path(d).exists() for d in mine) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(Path(d).exists() for d in mine), "closing the page left its folder behind"
