"""Several box prompts in the browser workspace (Debian's Chromium, headless, driven by Playwright).

"Add box" places one more ROI in a slice view, "Clear boxes" removes them all, two boxes of one structure
start a LiteMedSAM job (cancelled: a CPU run takes minutes), and a run without a box is refused with the
button to press. The boxes become the model's parameters through aiportal.prompts.boxes_from_roi_nodes, the
helper the desktop uses (its self-test checks the parameters against `--box ... --box-labels`).
"""

from __future__ import annotations

import shutil
import time

import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from workspace_browser import CHROMIUM, CHROMIUM_ARGS, ConsoleErrors, WorkspaceServer, artifacts_dir

WAIT_MS = 120_000  # loading, and LiteMedSAM on CPU, on a busy 2-core machine


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    from aiportal.models.envs import python_for

    python_for("litemedsam")  # the model's own environment (scripts/bootstrap --test sets it up)
    server = WorkspaceServer(tmp_path_factory.mktemp("workspace-boxes")).start()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.server = server
        yield page
        browser.close()
    server.stop()
    shutil.copy(server.log_path, artifacts_dir("workspace-boxes") / "server.log")


def _draw_box(page, x: float, y: float) -> None:
    """Add a box and place it in the axial view at (x, y), fractions of the view (the remote view sends the
    pointer's moves only while a button is down: a short drag places it)."""
    before = page.get_by_test_id("ai-box-count").inner_text()
    page.get_by_test_id("ai-add-box").click()
    time.sleep(0.5)  # the server switched to place mode
    axial = page.locator("img.image-display-area").first.bounding_box()
    px, py = axial["x"] + axial["width"] * x, axial["y"] + axial["height"] * y
    page.mouse.move(px, py)
    page.mouse.down()
    page.mouse.move(px + 3, py + 3, steps=3)
    page.mouse.up()
    playwright_api.expect(page.get_by_test_id("ai-box-count")).not_to_have_text(before, timeout=WAIT_MS)


def test_add_and_clear_boxes_then_run_with_two(page, shared_data):
    console = ConsoleErrors(page)
    page.goto(page.server.url)
    page.get_by_test_id("ai-segment-toolbar").click(timeout=WAIT_MS)
    page.get_by_test_id("load-path").locator("input").fill(str(shared_data / "totalseg" / "example_ct_sm.nii.gz"))
    page.get_by_test_id("load-open").click()
    page.get_by_test_id("volume-name").wait_for(timeout=WAIT_MS)
    page.wait_for_function("() => { const img = document.querySelector('img.image-display-area');"
                           " return img && img.complete && img.naturalWidth > 0; }", timeout=WAIT_MS)
    page.get_by_test_id("ai-model").click()
    page.locator(".v-list-item", has_text="LiteMedSAM").first.click()
    count = page.get_by_test_id("ai-box-count")
    playwright_api.expect(count).to_have_text("no box yet")

    page.get_by_test_id("ai-run").click()  # no box: refused, with the button to press
    playwright_api.expect(page.get_by_test_id("ai-error")).to_contain_text("needs a box", timeout=WAIT_MS)
    assert "Add box" in page.get_by_test_id("ai-error").inner_text()

    _draw_box(page, 0.3, 0.45)
    playwright_api.expect(count).to_have_text("1 box(es) placed")
    _draw_box(page, 0.65, 0.45)
    playwright_api.expect(count).to_have_text("2 box(es) placed")
    page.get_by_test_id("ai-clear-boxes").click()
    playwright_api.expect(count).to_have_text("no box yet", timeout=WAIT_MS)

    _draw_box(page, 0.75, 0.45)  # the spleen's side (patient left)
    _draw_box(page, 0.35, 0.45)
    playwright_api.expect(count).to_have_text("2 box(es) placed")
    page.get_by_test_id("ai-boxes-one-structure").locator("input").check()
    page.get_by_test_id("ai-run").click()  # accepted: the job starts (a full LiteMedSAM run is too slow here)
    page.get_by_test_id("ai-progress").wait_for(timeout=WAIT_MS)
    assert page.get_by_test_id("ai-error").count() == 0
    page.screenshot(path=str(artifacts_dir("workspace-boxes") / "two-boxes-run.png"))
    page.get_by_test_id("ai-cancel").click()
    playwright_api.expect(page.get_by_test_id("ai-summary")).to_contain_text("Cancelled", timeout=WAIT_MS)
    assert not console.errors, console.errors
