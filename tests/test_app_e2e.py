"""The app in a real browser: what a user clicks, streamed back into the page, down to the downloaded zip.

test_app.py covers the endpoints through gradio_client; this drives the page itself (Playwright on Debian's
chromium), so the layout, the streamed plotly heatmap and the download button are exercised as users see them.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright


CHROMIUM = Path("/usr/bin/chromium")
# A system browser: `playwright install` downloads its own, which needs a network this project does not assume.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BUDGET, IPC, CLASSES = 3, 2, ["0", "1"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")


@pytest.fixture
def page(app_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own 5 s default
            page.goto(app_url)
            yield page
        finally:
            browser.close()


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
    _set(page, "steps (proxies use half)", 6)


def test_explore_then_distill_and_download_in_the_browser(page: Page, tmp_path):
    page.get_by_label("class", exact=True).click()
    page.get_by_role("option", name="3", exact=True).click()
    _set(page, "m_seed (seed images)", 4)
    _small_settings(page)
    title = page.locator("#bo-heatmap .gtitle")
    expect(title).to_have_count(0)  # no heatmap before the run
    page.get_by_role("button", name="Run BO").click()
    expect(title).to_contain_text(f"after {BUDGET}/{BUDGET} evaluations")
    expect(page.get_by_text("f_final")).to_be_visible()  # the readout of BatchDone: the final batch is drawn
    final = page.get_by_test_id("block-label").filter(has_text="final (β*, γ*, repulsion)").locator("..")
    expect(final.locator("img")).to_have_count(4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_e2e.png"), full_page=True)

    page.get_by_role("tab", name="Distill & export").click()
    for c in [str(i) for i in range(10) if str(i) not in CLASSES]:
        page.get_by_role("checkbox", name=c, exact=True).uncheck()
    _set(page, "IPC (images per class)", IPC)
    _set(page, "m_seed (per mini-batch)", IPC)
    _small_settings(page)
    page.get_by_role("button", name="Distill", exact=True).click()
    expect(page.get_by_text("Done:")).to_be_visible()
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
