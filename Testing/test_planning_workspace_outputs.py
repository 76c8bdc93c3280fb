"""The workspace Planning panel's plan bundle and plan vs outcome in Debian's Chromium, against the CLI.

classic-ct on TotalSegmentator's real CT in the browser, a trajectory and a cut plane typed in; "Export plan
bundle" writes the bundle into the export folder and downloads it as a zip whose measurements equal
``aiportal plan bundle``'s on the same inputs. Then the post-operative case: the same CT moved by a known rigid
motion (header only) and segmented by the CLI; "Compare with outcome" registers it back and shows the same
per-structure distances and trajectory deviation as ``aiportal plan outcome``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from scipy.spatial.transform import Rotation
from workspace_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ConsoleErrors,
    artifacts_dir,
    open_and_segment,
    served_workspace,
)

WAIT_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from served_workspace(tmp_path_factory, "planning-outputs-server")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiportal.cli", *args], capture_output=True, text=True, timeout=900)


def _motion() -> np.ndarray:
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", (0.04, -0.03, 0.05)).as_matrix()
    motion[:3, 3] = (4.0, -3.0, 5.0)
    return motion


def _text(values) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def test_bundle_and_outcome_match_the_cli(server, shared_data, tmp_path):
    from aiportal.planning.grid import load_label_grid

    ct = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    done = _cli("segment", str(ct), "--model", "classic-ct", "--out", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr
    planned_seg = tmp_path / "cli" / "segmentation.seg.nrrd"
    grid = load_label_grid(planned_seg, volume=ct)
    right, left = (grid.ijk_to_ras_points(np.argwhere(grid.mask(name))).mean(axis=0)
                   for name in ("Right lung", "Left lung"))
    bundle = tmp_path / "cli-bundle"
    done = _cli("plan", "bundle", str(planned_seg), "--volume", str(ct), "--out", str(bundle), "--target",
                "Left lung", "--default-threshold", "5", "--trajectory", *map(str, [*right, *left]), "--radius", "1",
                "--organ", "Right lung", "--plane", *map(str, [*right, 0.0, 0.0, 1.0]))
    assert done.returncode == 0, done.stderr
    cli_plan = json.loads((bundle / "plan.json").read_text())

    # the post-operative case: the CT moved by a known motion, segmented by the CLI
    motion = _motion()
    image = nib.load(ct)
    moved = nib.Nifti1Image(np.asanyarray(image.dataobj), motion @ image.affine, image.header)
    moved.set_qform(motion @ image.affine, code=1)
    moved.set_sform(motion @ image.affine, code=1)
    post_ct = tmp_path / "postop_ct.nii.gz"
    nib.save(moved, post_ct)
    done = _cli("segment", str(post_ct), "--model", "classic-ct", "--out", str(tmp_path / "post"))
    assert done.returncode == 0, done.stderr
    post_seg = tmp_path / "post" / "segmentation.seg.nrrd"
    actual_entry, actual_target = (motion[:3, :3] @ p + motion[:3, 3] for p in (right, left))
    done = _cli("plan", "outcome", str(planned_seg), "--volume", str(ct), str(post_seg), "--planned-image", str(ct),
                "--actual-image", str(post_ct), "--planned-trajectory", *map(str, [*right, *left]),
                "--actual-trajectory", *map(str, [*actual_entry, *actual_target]), "--json")
    assert done.returncode == 0, done.stderr
    cli_outcome = json.loads(done.stdout)
    assert cli_outcome["frame"]["registered"]

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        console = ConsoleErrors(page)
        open_and_segment(page, server.url, ct, WAIT_MS)

        page.get_by_test_id("planning-toolbar").click()
        page.get_by_test_id("plan-target").click()
        page.locator(".v-overlay .v-list-item", has_text="Left lung").click()
        page.get_by_test_id("plan-entry").locator("input").fill(_text(right))
        page.get_by_test_id("plan-target-point").locator("input").fill(_text(left))
        page.get_by_test_id("plan-radius").locator("input").fill("1")
        page.get_by_test_id("plan-organ").click()
        page.locator(".v-overlay .v-list-item", has_text="Right lung").click()
        page.get_by_test_id("plan-plane-point").locator("input").fill(_text(right))
        page.get_by_test_id("plan-plane-normal").locator("input").fill("0 0 1")
        with page.expect_download(timeout=WAIT_MS) as download_info:
            page.get_by_test_id("plan-bundle").click()
        zipped = tmp_path / "browser-bundle.zip"
        download_info.value.save_as(zipped)
        page.get_by_test_id("plan-bundle-message").wait_for(timeout=WAIT_MS)
        message = page.get_by_test_id("plan-bundle-message").inner_text()
        assert "Plan bundle:" in message and cli_plan["resection"]["warnings"]  # the lung crosses the cut: said
        assert all(f"WARNING: {w}" in message for w in cli_plan["resection"]["warnings"]), message

        with zipfile.ZipFile(zipped) as archive:
            names = set(archive.namelist())
            plan = json.loads(archive.read("plan.json"))
        assert {"plan.json", "measurements.csv", "markups/trajectory_1.mrk.json"} <= names
        assert {entry["path"] for entry in plan["manifest"]["files"]} | {"plan.json"} == names
        assert sum(name.startswith("models/") for name in names) == len(grid.present_names()) + 1  # lung in 2 parts
        written = [p for p in server.export_dir.iterdir() if "-plan-" in p.name]
        assert len(written) == 1 and (written[0] / "plan.json").is_file()
        assert {r["structure"]: r["gap_mm"] for r in plan["proximity"]} == pytest.approx(
            {r["structure"]: r["gap_mm"] for r in cli_plan["proximity"]}, abs=1e-3)
        clearances = {r["structure"]: r["clearance_mm"] for r in plan["trajectories"][0]["structures"]}
        assert clearances == pytest.approx(
            {r["structure"]: r["clearance_mm"] for r in cli_plan["trajectories"][0]["structures"]}, abs=1e-3)
        for key in ("organ_ml", "resected_ml", "remnant_ml", "remnant_percent"):
            assert plan["resection"][key] == pytest.approx(cli_plan["resection"][key], abs=1e-3), key

        page.get_by_test_id("plan-post-segmentation").locator("input").fill(str(post_seg))
        page.get_by_test_id("plan-post-image").locator("input").fill(str(post_ct))
        page.get_by_test_id("plan-actual-entry").locator("input").fill(_text(actual_entry))
        page.get_by_test_id("plan-actual-target").locator("input").fill(_text(actual_target))
        page.get_by_test_id("plan-outcome").click()
        page.get_by_test_id("plan-outcome-table").wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(artifacts_dir("planning-outputs") / "01-outcome.png"))
        for row in cli_outcome["structures"]:
            name = row["structure"]
            for key in ("mean_surface_distance_mm", "hausdorff_mm"):
                shown = float(page.get_by_test_id(f"outcome-{key}-{name}").inner_text())
                assert shown == pytest.approx(row[key], abs=0.1), (name, key)  # the same registration
            assert float(page.get_by_test_id(f"outcome-planned_ml-{name}").inner_text()) == pytest.approx(
                row["planned_ml"], abs=0.006)
        summary = page.get_by_test_id("plan-outcome-summary").inner_text()
        assert "Registered" in summary
        assert f"target {cli_outcome['trajectory']['target_deviation_mm']:.1f} mm" in summary
        scene_volumes = page.get_by_test_id("volume-name").inner_text()
        assert "postop" not in scene_volumes  # the post-operative nodes left the workspace's scene

        page.get_by_test_id("plan-post-segmentation").locator("input").fill(str(tmp_path / "missing.seg.nrrd"))
        page.get_by_test_id("plan-outcome").click()
        page.get_by_test_id("plan-error").filter(has_text="missing.seg.nrrd does not exist").wait_for(timeout=WAIT_MS)
        assert not console.errors, console.errors
        browser.close()


def test_bundle_of_a_dicom_series_holds_seg_and_sr(server, shared_data, tmp_path):
    """Opened from DICOM (anonymised: new UIDs asked for in the Results panel), the bundle also holds the
    segments as a DICOM SEG and their TID 1500 SR, both valid."""
    from dicom_validation import dciodvfy_errors

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        console = ConsoleErrors(page)
        open_and_segment(page, server.url, shared_data / "totalseg" / "example_ct_dicom", WAIT_MS)
        page.get_by_test_id("results-toolbar").click()
        page.get_by_test_id("assign-uids").locator("input").check()
        page.get_by_test_id("planning-toolbar").click()
        page.get_by_test_id("plan-target").click()
        page.locator(".v-overlay .v-list-item").first.click()
        for field in ("plan-entry", "plan-target-point", "plan-plane-point", "plan-plane-normal"):
            page.get_by_test_id(field).locator("input").fill("")  # the first test's plan (the server keeps it)
        page.get_by_test_id("plan-organ").click()
        page.locator(".v-overlay .v-list-item").first.click()  # one of this segmentation's, not the first test's
        with page.expect_download(timeout=WAIT_MS) as download_info:
            page.get_by_test_id("plan-bundle").click()
        zipped = tmp_path / "bundle.zip"
        download_info.value.save_as(zipped)
        with zipfile.ZipFile(zipped) as archive:
            archive.extractall(tmp_path / "bundle")
        for name in ("segmentation.dcm", "measurements.dcm"):
            assert dciodvfy_errors(tmp_path / "bundle" / "dicom" / name) == [], name
        plan = json.loads((tmp_path / "bundle" / "plan.json").read_text())
        assert plan["proximity"] and "no DICOM" not in page.get_by_test_id("plan-bundle-message").inner_text()
        assert page.get_by_test_id("plan-error").count() == 0
        assert not console.errors, console.errors
        browser.close()
