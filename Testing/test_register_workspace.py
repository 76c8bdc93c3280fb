"""The workspace's Register panel in Debian's Chromium: the nibabel MR pair with its known motion
(shared/data/nibabel-moved) registered with the defaults, the page's lines checked against what
`aiportal register` prints and writes for the same pair, the found motion against the known one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_registration import KNOWN_MOTION, rotation_error_deg
from workspace_browser import CHROMIUM, CHROMIUM_ARGS, ConsoleErrors, WorkspaceServer, artifacts_dir

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package)")

WAIT_MS = 60_000
REGISTER_WAIT_MS = 400_000  # rigid + auto's refinement + the perturbed re-run on a busy 2-core machine


def _without_timing(line: str) -> str:
    return re.sub(r" in [0-9.]+ s$", "", line)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = WorkspaceServer(tmp_path_factory.mktemp("workspace")).start()
    yield workspace
    workspace.stop()
    shutil.copy(workspace.log_path, artifacts_dir("register-server") / "server.log")


def test_register_panel_shows_what_the_cli_prints(server, shared_data, tmp_path):
    folder = shared_data / "nibabel-moved"
    fixed, moving = folder / "anatomical.nii", folder / "reoriented_anat_moved.nii"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "register", str(fixed), str(moving), "--no-resample",
                           "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "cli" / "registration.json").read_text())
    cli_method = next(line for line in done.stdout.splitlines() if line.startswith("rigid registration of"))
    cli_warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING:")]
    cli_matrix = np.array(record["moving_to_fixed_ras"])

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        console = ConsoleErrors(page)
        page.goto(server.url)
        page.get_by_test_id("ai-segment-toolbar").click(timeout=WAIT_MS)
        page.get_by_test_id("load-path").locator("input").fill(str(fixed))
        page.get_by_test_id("load-open").click()
        page.get_by_test_id("volume-name").wait_for(timeout=WAIT_MS)

        page.get_by_test_id("register-toolbar").click()
        page.get_by_test_id("reg-moving").locator("input").fill(str(moving))
        page.get_by_test_id("reg-run").click()
        page.get_by_test_id("reg-stage").wait_for(timeout=WAIT_MS)  # progress while the job runs
        page.get_by_test_id("reg-method").wait_for(timeout=REGISTER_WAIT_MS)
        page.screenshot(path=str(artifacts_dir("register-panel") / "01-registered.png"))
        assert not page.get_by_test_id("reg-error").count()
        method = page.get_by_test_id("reg-method").inner_text()
        # the CLI's line names the two files; the page's the open volume: compare what follows
        assert _without_timing(method.split(": ", 1)[1]) == _without_timing(cli_method.split(": ", 1)[1])
        assert record["metric_choice"]["picked"] in method and record["metric_choice"]["reason"] in method
        checks = page.get_by_test_id("reg-checks").inner_text()
        assert f"{record['consistency_check']['disagreement_mm']:.2f} mm apart" in checks
        assert f"sharpness {record['edge_alignment_check']['sharpness']:.2f}" in checks
        warnings = page.get_by_test_id("reg-warnings")
        assert (warnings.inner_text().splitlines() if warnings.count() else []) == cli_warnings
        shown = np.array(json.loads(page.get_by_test_id("reg-motion").get_attribute("data-matrix")))
        true = np.linalg.inv(KNOWN_MOTION)
        # the same motion as the CLI found, so the same error against the known motion
        assert rotation_error_deg(shown, true) == pytest.approx(rotation_error_deg(cli_matrix, true), abs=0.01)
        assert np.abs(shown[:3, 3] - cli_matrix[:3, 3]).max() < 0.05
        assert page.get_by_test_id("reg-fusion").is_visible()
        assert not console.errors, console.errors
        browser.close()
