"""The workspace's Planning panel in Debian's Chromium: classic-ct on a real CT, then the closest
approach of every segment to the left lung, a trajectory's clearances and virtual resections of the
right lung by a plane and by a drawn surface, each checked against aiportal.planning on the CLI's output."""

from __future__ import annotations

import numpy as np
import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from workspace_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ConsoleErrors,
    artifacts_dir,
    open_and_segment,
    served_workspace,
)

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from served_workspace(tmp_path_factory, "planning-server")


def test_proximity_panel_matches_the_library(server, shared_data, tmp_path):
    from aiportal.cli import main
    from aiportal.planning.grid import load_label_grid
    from aiportal.planning.proximity import proximity_table
    from aiportal.planning.resection import Plane, resect
    from aiportal.planning.surface_cut import CutSurface
    from aiportal.planning.trajectory import TrajectoryPlanner

    ct = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    assert main(["segment", str(ct), "--model", "classic-ct", "--out", str(tmp_path / "cli")]) == 0
    grid = load_label_grid(tmp_path / "cli" / "segmentation.seg.nrrd", volume=ct)
    expected = {row.structure: row for row in proximity_table(grid, "Left lung", default_threshold_mm=5.0)}

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        console = ConsoleErrors(page)
        open_and_segment(page, server.url, ct, WAIT_MS)

        page.get_by_test_id("planning-toolbar").click()
        page.get_by_test_id("plan-target").click()
        page.locator(".v-overlay .v-list-item", has_text="Left lung").click()
        page.get_by_test_id("plan-proximity").click()
        page.get_by_test_id("plan-table").wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(artifacts_dir("planning-proximity") / "01-proximity.png"))
        shown = {name: float(page.get_by_test_id(f"plan-gap-{name}").inner_text()) for name in expected}
        assert shown == {name: pytest.approx(row.gap_mm, abs=0.051) for name, row in expected.items()}
        alerts = sum(row.alert for row in expected.values())
        assert (page.get_by_test_id("plan-alerts").count() == 1) == (alerts > 0)

        # a trajectory from the right lung's centre to the left lung's
        right, left = (grid.ijk_to_ras_points(np.argwhere(grid.mask(name))).mean(axis=0)
                       for name in ("Right lung", "Left lung"))
        report = TrajectoryPlanner(grid, default_threshold_mm=5.0).check(right, left, 1.0)
        page.get_by_test_id("plan-entry").locator("input").fill(" ".join(f"{v:.3f}" for v in right))
        page.get_by_test_id("plan-target-point").locator("input").fill(", ".join(f"{v:.3f}" for v in left))
        page.get_by_test_id("plan-radius").locator("input").fill("1")
        page.get_by_test_id("plan-path-check").click()
        page.get_by_test_id("plan-path-table").wait_for(timeout=WAIT_MS)
        for row in report.structures:
            shown_mm = float(page.get_by_test_id(f"plan-clearance-{row.structure}").inner_text())
            assert shown_mm == pytest.approx(row.clearance_mm, abs=0.051), row.structure

        # resection of the right lung: a plane through its centre, then a drawn (curved) surface
        plane, _ = resect(grid, "Right lung", planes=[Plane(tuple(right), (0.0, 0.0, 1.0))])
        page.get_by_test_id("plan-organ").click()
        page.locator(".v-overlay .v-list-item", has_text="Right lung").click()
        page.get_by_test_id("plan-plane-point").locator("input").fill(" ".join(f"{v:.4f}" for v in right))
        page.get_by_test_id("plan-plane-normal").locator("input").fill("0 0 1")
        page.get_by_test_id("plan-resect").click()
        page.get_by_test_id("plan-resection").wait_for(timeout=WAIT_MS)
        assert page.get_by_test_id("plan-remnant-ml").inner_text() == f"{plane.remnant_ml:.1f}"
        a, s = np.meshgrid([-60.0, 0.0, 60.0], [-40.0, 0.0, 40.0])
        points = np.c_[right[0] + 0.004 * a.ravel() ** 2, right[1] + a.ravel(), right[2] + s.ravel()]
        drawn, _ = resect(grid, "Right lung", surface=CutSurface(points, left), target="Left lung")
        assert drawn.remnant_ml != plane.remnant_ml
        page.get_by_test_id("plan-surface").locator("textarea").fill(
            "\n".join(" ".join(f"{v:.4f}" for v in p) for p in points))
        page.get_by_test_id("plan-resect").click()
        page.get_by_test_id("plan-remnant-percent").filter(has_text=f"{drawn.remnant_percent:.1f}").wait_for(
            timeout=WAIT_MS)
        assert page.get_by_test_id("plan-remnant-ml").inner_text() == f"{drawn.remnant_ml:.1f}"
        page.screenshot(path=str(artifacts_dir("planning-proximity") / "02-trajectory-resection.png"))
        assert page.get_by_test_id("plan-error").count() == 0
        assert not console.errors, console.errors
        browser.close()
