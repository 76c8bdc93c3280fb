"""The browser workspace in a real browser: Debian's Chromium (headless) driven by Playwright.

The workspace runs as its own process on a free loopback port, renders without a GPU, and is
used the way a reader uses it: open a CT, AI Segment with classic-ct, read the segment list and
statistics, paint an edit with the segment editor, accept / reject, download STL. What the page
claims is checked against the server's audit log and the downloaded file. Screenshots of every
step are kept (AIPORTAL_TEST_ARTIFACTS, default build/test-artifacts/).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api  # the test extra: missing, the tests fail (no skip)
from workspace_browser import ConsoleErrors, WorkspaceServer, artifacts_dir, served_workspace

WAIT_MS = 60_000  # loading, running and exporting on a busy 2-core machine
VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from served_workspace(tmp_path_factory, "server")


class Steps:
    """Numbered screenshots of one test."""

    def __init__(self, page, name: str) -> None:
        self.page, self.folder, self.count = page, artifacts_dir(name), 0
        for old in self.folder.glob("*.png"):
            old.unlink()

    def shot(self, what: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{what}.png"
        self.page.screenshot(path=str(path))
        return path


def _open(page, server: WorkspaceServer) -> None:
    page.goto(server.url)
    page.get_by_test_id("ai-segment-toolbar").click(timeout=WAIT_MS)  # the AI panel opens files too
    page.get_by_test_id("ai-panel").wait_for()


def _load(page, path: Path) -> None:
    page.get_by_test_id("load-path").locator("input").fill(str(path))
    page.get_by_test_id("load-open").click()
    page.get_by_test_id("volume-name").wait_for(timeout=WAIT_MS)


def _volume_ml(page, segment: str) -> float:
    return float(page.get_by_test_id(f"stats-volume_ml-{segment}").inner_text())


def _wait_for_render(page, view_index: int = 0) -> None:
    """Until the view shows a server-rendered image (the RCA image element gets a frame)."""
    page.wait_for_function(
        "i => { const img = document.querySelectorAll('img.image-display-area')[i];"
        " return img && img.complete && img.naturalWidth > 0; }", arg=view_index, timeout=WAIT_MS)


def _audit(server: WorkspaceServer) -> list[dict]:
    return [json.loads(line) for line in server.audit_log.read_text().splitlines() if line.strip()]


def test_ai_segment_review_edit_and_export(chromium, server, shared_data):
    page = chromium.new_page(viewport=VIEWPORT, accept_downloads=True)
    console = ConsoleErrors(page)
    steps = Steps(page, "ai-segment-review-export")
    _open(page, server)
    steps.shot("empty-workspace")

    _load(page, shared_data / "totalseg" / "example_ct_sm.nii.gz")
    assert page.get_by_test_id("volume-name").inner_text().strip() == "example_ct_sm"
    _wait_for_render(page)
    steps.shot("ct-loaded")

    # AI Segment from the 3D view's toolbar: the panel opens with classic-ct picked
    page.get_by_test_id("ai-segment-3d").click()
    assert "classic-ct" in page.get_by_test_id("ai-model").inner_text()
    page.get_by_test_id("ai-run").click()
    page.get_by_test_id("ai-summary").wait_for(timeout=WAIT_MS)
    assert "4 suggested segments" in page.get_by_test_id("ai-summary").inner_text()
    assert page.get_by_test_id("ai-progress").count() == 0 and page.get_by_test_id("ai-error").count() == 0
    for name in ("Body", "Left lung", "Right lung", "Bone"):
        assert page.get_by_test_id(f"segment-state-{name}").inner_text().strip() == "suggested"
    steps.shot("ai-suggestions")

    page.get_by_test_id("results-toolbar").click()
    page.get_by_test_id("stats-Left lung").wait_for()
    before = {name: _volume_ml(page, name) for name in ("Left lung", "Right lung", "Bone")}
    assert all(volume > 1 for volume in before.values()), before
    assert float(page.get_by_test_id("stats-hu_mean-Left lung").inner_text()) < -500  # air-filled lung
    steps.shot("statistics")

    # paint into the left lung with the segment editor's Paint effect: drags in the axial view
    expect = playwright_api.expect
    page.get_by_test_id("ai-segment-toolbar").click()
    page.get_by_test_id("segment-row-Left lung").get_by_text("Left lung").click()
    page.locator(".v-navigation-drawer button:has(i.mdi-brush)").first.click()  # segment editor panel
    drawer = page.locator(".v-navigation-drawer").first
    expect(drawer.locator(".v-list-item--active input")).to_have_value("Left lung", timeout=WAIT_MS)
    paint = drawer.locator("button:has(i.mdi-brush)")
    paint.click()
    expect(paint).to_have_class(re.compile(r"v-btn--active"), timeout=WAIT_MS)  # the server switched effect
    page.get_by_test_id("results-toolbar").click()  # Paint stays on; the statistics stay in view
    page.get_by_test_id("stats-Left lung").wait_for(timeout=WAIT_MS)
    axial = page.locator("img.image-display-area").first.bounding_box()
    x0, y = axial["x"] + axial["width"] * 0.35, axial["y"] + axial["height"] * 0.45
    volume_ml = before["Left lung"]
    for offset in (0, 15):  # two strokes, each painted (the table follows) before the next
        page.mouse.move(x0, y + offset)
        page.mouse.down()
        page.mouse.move(x0 + axial["width"] * 0.25, y + offset, steps=10)
        page.mouse.up()
        page.wait_for_function(
            "v => { const cell = document.querySelector('[data-testid=\"stats-volume_ml-Left lung\"]');"
            " return cell !== null && parseFloat(cell.innerText) > v; }", arg=volume_ml, timeout=WAIT_MS)
        volume_ml = _volume_ml(page, "Left lung")
    after = _volume_ml(page, "Left lung")
    assert after > before["Left lung"] + 1, (before, after)
    assert _volume_ml(page, "Bone") == before["Bone"]
    steps.shot("painted-statistics-follow")
    page.locator(".v-navigation-drawer button:has(i.mdi-cursor-default)").click()  # back to "No tool"

    # the reader's decisions: edited lung -> modified, body rejected, bone accepted
    page.get_by_test_id("ai-segment-toolbar").click()
    page.get_by_test_id("accept-Left lung").click()
    expect(page.get_by_test_id("segment-state-Left lung")).to_have_text("modified")
    page.get_by_test_id("reject-Body").click()
    expect(page.get_by_test_id("segment-row-Body")).to_have_count(0)
    page.get_by_test_id("accept-Bone").click()
    expect(page.get_by_test_id("segment-state-Bone")).to_have_text("accepted")
    expect(page.get_by_test_id("segment-state-Right lung")).to_have_text("suggested")
    steps.shot("reviewed")

    # STL download of the edited segment: one closed surface, in a file named after it
    page.get_by_test_id("results-toolbar").click()
    final_ml = _volume_ml(page, "Left lung")  # both strokes painted by now
    with page.expect_download(timeout=WAIT_MS) as download_info:
        page.get_by_test_id("download-stl-Left lung").click()
    download = download_info.value
    assert download.suggested_filename == "Left_lung.stl"
    stl = steps.folder / download.suggested_filename
    download.save_as(stl)
    volume_ml = _closed_stl_volume_mm3(stl) / 1000
    assert volume_ml == pytest.approx(final_ml, rel=0.1)  # the smoothed surface encloses the painted segment

    # SEG + SR need the DICOM series: a NIfTI input is refused in the page, with the fix
    page.get_by_test_id("save-dicom").click()
    expect(page.get_by_test_id("export-error")).to_be_visible(timeout=WAIT_MS)
    assert "DICOM" in page.get_by_test_id("export-error").inner_text()
    steps.shot("export")

    records = _audit(server)
    runs = [r for r in records if r["event"] == "ai_run"]
    assert len(runs) == 1 and runs[0]["model_id"] == "classic-ct"
    assert runs[0]["input"].endswith("example_ct_sm.nii.gz")
    reviews = {r["segment"]: r for r in records if r["event"] == "review"}
    assert {name: r["decision"] for name, r in reviews.items()} == {
        "Left lung": "modified", "Body": "rejected", "Bone": "accepted"}
    assert {r["run_id"] for r in reviews.values()} == {runs[0]["run_id"]}
    lung, bone = reviews["Left lung"], reviews["Bone"]  # the AI's draft was kept: how much the reader changed
    assert (bone["draft_dice"], bone["volume_change"]) == (1.0, 0.0)
    assert lung["draft_ml"] == pytest.approx(before["Left lung"], rel=0.02), lung
    assert lung["final_ml"] == pytest.approx(final_ml, rel=0.02), (lung, final_ml)
    # the strokes only added voxels: the whole draft is inside the final segment
    assert lung["draft_dice"] == pytest.approx(2 * lung["draft_ml"] / (lung["draft_ml"] + lung["final_ml"]), rel=1e-3)
    assert len(list(server.audit_log.with_name("drafts").glob("*.npz"))) >= 4  # one per suggested segment
    exports = [r for r in records if r["event"] == "export"]
    assert [r["formats"] for r in exports] == [["stl"]] and exports[0]["run_id"] == runs[0]["run_id"]
    assert records[-1]["event"] == "export" and server.audit_log.with_name("audit.jsonl.head").is_file()
    assert not console.errors, console.errors
    page.close()


def _closed_stl_volume_mm3(path: Path) -> float:
    """The volume a binary or ASCII STL file encloses; fails unless it is one closed, manifold surface."""
    import vtk

    from aiportal.export.surfaces import surface_is_closed, surface_volume_mm3

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    mesh = reader.GetOutput()
    assert mesh.GetNumberOfCells() > 100, f"{path} holds {mesh.GetNumberOfCells()} triangles"
    assert surface_is_closed(mesh), f"{path} has holes or non-manifold edges"
    return surface_volume_mm3(mesh)


def test_dicom_folder_to_seg_and_sr(chromium, server, shared_data):
    """A DICOM folder opened by path; SEG + SR, key images, 3D models and the RT Structure Set saved (the series
    is anonymised: new UIDs asked for)."""
    page = chromium.new_page(viewport=VIEWPORT)
    console = ConsoleErrors(page)
    steps = Steps(page, "dicom-seg-sr")
    _open(page, server)
    _load(page, shared_data / "totalseg" / "example_ct_dicom")
    page.get_by_test_id("ai-run").click()
    page.get_by_test_id("ai-summary").wait_for(timeout=WAIT_MS)
    page.get_by_test_id("results-toolbar").click()
    page.get_by_test_id("assign-uids").locator("input").check()
    page.get_by_test_id("export-key-images").locator("input").check()
    page.get_by_test_id("export-models").locator("input").check()
    page.get_by_test_id("export-rtstruct").locator("input").check()
    page.get_by_test_id("save-dicom").click()
    message = page.get_by_test_id("export-message")
    playwright_api.expect(message).to_contain_text("measurements.dcm", timeout=WAIT_MS)
    steps.shot("seg-sr-saved")
    folder = Path(re.search(r" in (/\S+)$", message.inner_text().strip()).group(1))
    assert (folder / "segmentation.dcm").is_file() and (folder / "measurements.dcm").is_file()
    assert list((folder / "key_images").glob("*.dcm")) and list((folder / "models").glob("*.dcm"))
    assert (folder / "structures.dcm").is_file()
    export = [r for r in _audit(server) if r["event"] == "export"][-1]
    assert sorted(export["formats"]) == ["estl", "rtstruct", "sc", "seg", "sr"]
    assert {o["kind"] for o in export["outputs"]} >= {"seg", "sr", "sc", "estl", "rtstruct"}
    assert not console.errors, console.errors
    page.close()


def test_failing_model_and_lost_server_show_errors(chromium, tmp_path, shared_data):
    server = WorkspaceServer(tmp_path).start()
    try:
        page = chromium.new_page(viewport=VIEWPORT)
        console = ConsoleErrors(page)
        steps = Steps(page, "errors")
        _open(page, server)
        # this time the file comes from the browser's machine: the top bar's upload button
        page.locator("input[type=file]:not([webkitdirectory])").set_input_files(
            shared_data / "totalseg" / "example_mr_sm.nii.gz")
        playwright_api.expect(page.get_by_test_id("volume-name")).to_have_text("example_mr_sm", timeout=WAIT_MS)
        page.get_by_test_id("ai-run").click()
        error = page.get_by_test_id("ai-error")
        error.wait_for(timeout=WAIT_MS)
        assert re.search(r"does not look like CT", error.inner_text())
        assert "pick a CT volume or another model" in error.inner_text()
        assert page.get_by_test_id("ai-progress").count() == 0  # no spinner left behind
        assert page.get_by_test_id("ai-run").is_enabled()
        steps.shot("model-refuses-mr")

        page.get_by_test_id("load-path").locator("input").fill("/nonexistent/scan.nii.gz")
        page.get_by_test_id("load-open").click()
        playwright_api.expect(page.get_by_test_id("ws-error")).to_contain_text("does not exist", timeout=WAIT_MS)
        steps.shot("missing-file")
        assert not console.errors, console.errors

        server.stop()  # the server goes away under the page
        page.get_by_test_id("connection-lost").wait_for(timeout=WAIT_MS)
        assert "not reachable" in page.get_by_test_id("connection-lost").inner_text()
        steps.shot("server-lost")

        server.start()  # back on the same port: a reload gives a working workspace again
        page.get_by_role("button", name="Reload").click()
        page.get_by_test_id("ai-segment-toolbar").wait_for(timeout=WAIT_MS)
        steps.shot("server-back")
        page.close()
    finally:
        server.stop()
