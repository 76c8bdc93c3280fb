"""Install weights from the browser workspace (Debian's Chromium, headless, driven by Playwright).

The weights come from a loopback server (no internet): TotalSegmentator's 3 mm 'total' dataset as its
real release zip, with tiny threshold weights (Testing/tiny_models.py). The page shows licence and
size, asks once (declining downloads nothing), shows progress, and then TotalSegmentator runs from
the page on a real CT and finds the two structures its tiny weights label.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile

import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from tiny_models import write_totalseg_fast_model
from weights_server import FileServer
from workspace_browser import CHROMIUM, CHROMIUM_ARGS, ConsoleErrors, WorkspaceServer, artifacts_dir

from aiportal.models.backends import totalsegmentator

WAIT_MS = 180_000  # loading and a TotalSegmentator run on a busy 2-core machine
MODEL = "totalseg-total-fast"
RELEASE = "/v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip"


def _release_zip(folder) -> bytes:
    labels = {label.name: label.value for label in totalsegmentator.entry_for(totalsegmentator.VARIANTS[1]).labels}
    rules = [(labels["vertebrae_L1"], ">", 200.5), (labels["lung_upper_lobe_left"], "<", -500.5)]
    dataset = write_totalseg_fast_model(folder, rules).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(dataset.rglob("*")):
            archive.write(path, path.relative_to(dataset.parent).as_posix())
    return buffer.getvalue()


def test_install_weights_from_the_page_then_run(tmp_path, monkeypatch, shared_data):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    body = _release_zip(tmp_path / "release")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AIPORTAL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIPORTAL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    shots = artifacts_dir("workspace-weights")
    with FileServer({RELEASE: body}) as files:
        files.behaviour.cut_first = 1  # the first transfer breaks off: the install resumes it
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps({MODEL: {"version": "2.0.0-test", "license": "Apache-2.0", "artifacts": [
            {"name": RELEASE.rsplit("/", 1)[1], "url": files.url(RELEASE), "layout": "totalseg-zip",
             "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}]}}))
        monkeypatch.setenv("AIPORTAL_WEIGHTS_MANIFEST", str(manifest))
        (tmp_path / "workspace").mkdir()
        server = WorkspaceServer(tmp_path / "workspace").start()  # inherits the environment set above
        try:
            with playwright_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                console = ConsoleErrors(page)
                page.goto(server.url)
                page.get_by_test_id("ai-segment-toolbar").click(timeout=WAIT_MS)
                page.get_by_test_id("load-path").locator("input").fill(
                    str(shared_data / "totalseg" / "example_ct_sm.nii.gz"))
                page.get_by_test_id("load-open").click()
                page.get_by_test_id("volume-name").wait_for(timeout=WAIT_MS)
                assert page.get_by_test_id("weights-block").count() == 0  # classic-ct: nothing to install
                page.get_by_test_id("ai-model").click()
                page.locator(".v-list-item", has_text=f"({MODEL})").first.click()

                licence = page.get_by_test_id("weights-licence")
                playwright_api.expect(licence).to_contain_text("Licence: Apache-2.0", timeout=WAIT_MS)
                assert f"{len(body) / 1e3:.0f} kB" in licence.inner_text()
                playwright_api.expect(page.get_by_test_id("ai-run")).to_be_disabled()  # no weights yet
                page.screenshot(path=str(shots / "01-weights-missing.png"))

                page.get_by_test_id("weights-install").click()  # asked, declined: nothing downloaded
                question = page.get_by_test_id("weights-question")
                playwright_api.expect(question).to_contain_text("Licence: Apache-2.0")
                assert files.url(RELEASE) in question.inner_text()
                page.screenshot(path=str(shots / "02-question.png"))
                page.get_by_test_id("weights-decline").click()
                playwright_api.expect(question).to_be_hidden()
                assert not files.behaviour.requests

                page.get_by_test_id("weights-install").click()  # asked again, accepted: installed once
                page.get_by_test_id("weights-accept").click()
                playwright_api.expect(page.get_by_test_id("weights-installed")).to_be_visible(timeout=WAIT_MS)
                message = page.get_by_test_id("weights-message").inner_text()
                assert message == f"{MODEL}: weights installed", message  # sha256 from the manifest: no warning
                page.screenshot(path=str(shots / "03-installed.png"))
                assert [r["headers"].get("Range") is not None for r in files.behaviour.requests] == [False, True]

                page.get_by_test_id("ai-run").click()  # the model is usable now
                summary = page.get_by_test_id("ai-summary")
                playwright_api.expect(summary).to_contain_text("suggested segments", timeout=WAIT_MS)
                assert page.get_by_test_id("ai-error").count() == 0
                assert page.locator("[data-testid^='segment-row-']").count() == 2, summary.inner_text()
                for name in ("vertebrae_L1", "lung_upper_lobe_left"):  # what the tiny weights label
                    assert page.get_by_test_id(f"segment-row-{name}").count() == 1, summary.inner_text()
                page.screenshot(path=str(shots / "04-segmented.png"))
                assert not console.errors, console.errors
                browser.close()
        finally:
            server.stop()
            shutil.copy(server.log_path, shots / "server.log")
    dataset = tmp_path / "totalseg" / "nnunet" / "results" / RELEASE.rsplit("/", 1)[1].removesuffix(".zip")
    assert any(dataset.glob("*__*__*/fold_*/checkpoint_final.pth"))  # where TotalSegmentator looks
    receipt = json.loads((tmp_path / "weights" / "receipts" / f"{MODEL}.json").read_text())
    assert receipt["artifacts"][0]["checked_against"] == "manifest"
