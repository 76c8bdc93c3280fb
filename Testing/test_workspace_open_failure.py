"""A failed OPEN in the browser workspace keeps the study already open (issue 18): the error shows,
the volume's name stays, the views keep showing its image, and the AI still runs on it.
Real Chromium (headless, Playwright) against the workspace process.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from workspace_browser import CHROMIUM, CHROMIUM_ARGS, WorkspaceServer

WAIT_MS = 60_000


def _view_pixels(page) -> np.ndarray:
    """The views' pixels side by side (grey levels)."""
    from PIL import Image

    page.wait_for_function("() => { const img = document.querySelector('img.image-display-area');"
                           " return img && img.complete && img.naturalWidth > 0; }", timeout=WAIT_MS)
    views = page.locator("img.image-display-area")
    return np.concatenate([np.asarray(Image.open(io.BytesIO(views.nth(index).screenshot())).convert("L"),
                                      dtype=float).ravel() for index in range(views.count())])


def _load(page, path: Path | str) -> None:
    page.get_by_test_id("load-path").locator("input").fill(str(path))
    page.get_by_test_id("load-open").click()


def test_a_failed_open_keeps_the_open_study(shared_data, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium")
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_text("not an image")
    truncated = tmp_path / "truncated.nii.gz"  # a half-copied scan: ITK alone would open it with zeros
    whole = (shared_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    server = WorkspaceServer(tmp_path).start()
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url)
            page.get_by_test_id("ai-segment-toolbar").click(timeout=WAIT_MS)
            _load(page, shared_data / "totalseg" / "example_ct_sm.nii.gz")
            name = page.get_by_test_id("volume-name")
            playwright_api.expect(name).to_have_text("example_ct_sm", timeout=WAIT_MS)
            page.wait_for_timeout(3000)  # the first frames of the views
            shown = _view_pixels(page)
            assert shown.std() > 5, "the CT is not shown to begin with"

            for bad in (damaged, truncated, "/nonexistent/scan.nii.gz"):
                _load(page, bad)
                error = page.get_by_test_id("ws-error")
                playwright_api.expect(error).to_be_visible(timeout=WAIT_MS)
                if bad == truncated:  # what and fix, on one line
                    playwright_api.expect(error).to_contain_text("truncated", timeout=WAIT_MS)
                    assert "again" in error.inner_text() and len(error.inner_text().strip().splitlines()) <= 2
                playwright_api.expect(name).to_have_text("example_ct_sm")  # still open
                page.wait_for_timeout(1500)
                after = _view_pixels(page)
                assert after.std() > 0.5 * shown.std() and after.mean() > 0.5 * shown.mean(), "the views went black"

            page.get_by_test_id("ai-run").click()  # the kept study is still usable
            summary = page.get_by_test_id("ai-summary")
            summary.wait_for(timeout=WAIT_MS * 2)
            assert "4 suggested segments" in summary.inner_text()
            assert page.get_by_test_id("ai-error").count() == 0
            browser.close()
    finally:
        server.stop()
