"""AISegmentPortal's Review section (AISegmentPortalLib/review_panel.py) on a real Slicer core scene.

classic-ct runs on a real CT; the panel's own code is driven: the result is shown (suggestions and their
drafts kept, the run audited), a segment's voxels are edited as the segment editor does, then the
panel's Mark as edited / Reject / Accept buttons record the decisions. Only Qt is stood in for: a table
that keeps its items (no Slicer application runs here); `slicer.util` and the MRML scene are real.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from desktop_panel_fakes import Button, Table, import_panel

from aiportal.audit import AuditLog
from aiportal.io.volumes import load_volume
from aiportal.review import review_state
from aiportal.segment import SegmentationJob
from aiportal.segmentation import segment_ids, segment_mask, segment_voxel_counts


@pytest.fixture
def review_panel_module(monkeypatch):
    return import_panel(monkeypatch, "review_panel")


def _grow(node, segment_id: str, volume) -> None:
    """Add a block of voxels to a segment the way the segment editor does (a reader's edit)."""
    import slicer

    from aiportal.segmentation import ijk_to_ras_vtk, oriented_image

    mask = segment_mask(node, segment_id, volume)
    k, j, i = np.argwhere(mask)[0]
    mask[max(k - 2, 0):k + 2, max(j - 6, 0):j + 6, max(i - 6, 0):i + 6] = True
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(mask.astype(np.uint8), ijk_to_ras_vtk(volume)), node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def test_the_review_panel_records_edits_rejections_and_acceptances(review_panel_module, runtime, shared_data,
                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv("AIPORTAL_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("AIPORTAL_DRAFTS_DIR", str(tmp_path / "drafts"))
    volume = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    result = SegmentationJob(volume, "classic-ct", runtime=runtime).run()
    node = result.segmentation_node
    names = {node.GetSegmentation().GetSegment(s).GetName(): s for s in segment_ids(node)}

    ui = types.SimpleNamespace(reviewTable=Table(), reviewPendingLabel=types.SimpleNamespace(text=""),
                               reviewLabel=types.SimpleNamespace(text=""),
                               reviewCollapsibleButton=types.SimpleNamespace(collapsed=True),
                               **{name: Button() for name in review_panel_module.DECISION_BUTTONS})
    shown = [None]
    panel = review_panel_module.ReviewPanel(ui, lambda: shown[0])
    assert ui.reviewTable.rows == [] and ui.reviewPendingLabel.text == "No AI segments to review."
    shown[0] = node
    panel.showResult(result, "example_ct_sm")
    assert ui.reviewCollapsibleButton.collapsed is False
    assert set(ui.reviewTable.states().values()) == {"suggested"} and set(ui.reviewTable.states()) == set(names)
    assert len(list((tmp_path / "drafts").glob("*.npz"))) == len(names)  # every suggestion's draft is kept

    before = segment_voxel_counts(node)[names["Left lung"]]
    _grow(node, names["Left lung"], volume)
    after = segment_voxel_counts(node)[names["Left lung"]]
    assert after > before
    editor = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # the Segment Editor's parameters
    editor.SetAndObserveSegmentationNode(node)
    ui.reviewTable.select("Left lung")  # picking the row selects the segment for editing
    assert editor.GetSelectedSegmentID() == names["Left lung"]
    ui.reviewEditedButton.click()
    assert "Left lung: modified" in ui.reviewLabel.text and "Dice with the AI draft" in ui.reviewLabel.text
    ui.reviewTable.select("Body")
    ui.reviewRejectButton.click()
    assert "Body: rejected (removed" in ui.reviewLabel.text
    ui.reviewTable.select("Bone")
    ui.reviewAcceptButton.click()
    assert "Bone: accepted — Dice with the AI draft 1.000, volume +0.0 %" in ui.reviewLabel.text

    states = ui.reviewTable.states()
    assert states["Left lung"] == "modified" and states["Bone"] == "accepted" and "Body" not in states
    assert names["Body"] not in segment_ids(node) and review_state(node, names["Bone"]) == "accepted"
    assert ui.reviewPendingLabel.text == f"{len(names) - 3} of {len(names) - 1} AI segments wait for your decision."

    # a segment removed or renamed in the Segment Editor leaves the table at once (the node is observed)
    node.GetSegmentation().GetSegment(names["Bone"]).SetName("Bone (checked)")
    assert "Bone (checked)" in ui.reviewTable.states()
    node.GetSegmentation().RemoveSegment(names["Left lung"])
    assert "Left lung" not in ui.reviewTable.states()
    panel.cleanup()

    log = AuditLog(tmp_path / "audit.jsonl")
    records = log.records()
    assert [r["event"] for r in records] == ["ai_run", "review", "review", "review"]
    assert records[0]["run_id"] == result.provenance.run_id and records[0]["via"] == "desktop"
    edited, rejected, accepted = records[1:]
    assert [r["decision"] for r in (edited, rejected, accepted)] == ["modified", "rejected", "accepted"]
    assert {r["run_id"] for r in records} == {result.provenance.run_id}
    assert edited["edited"] is True and edited["draft_dice"] < 1.0
    assert edited["draft_dice"] == pytest.approx(2 * before / (before + after), rel=1e-4)  # grown, none removed
    assert edited["volume_change"] == pytest.approx((after - before) / before, rel=1e-3)
    assert rejected["segment"] == "Body" and rejected["draft_dice"] == 1.0
    assert accepted["draft_dice"] == 1.0 and accepted["volume_change"] == 0.0 and accepted["edited"] is False
    assert log.verify() == []


def test_a_decision_without_a_selection_warns_and_records_nothing(review_panel_module, runtime, tmp_path,
                                                                  monkeypatch):
    import slicer

    monkeypatch.setenv("AIPORTAL_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    warnings = []
    monkeypatch.setattr(slicer.util, "warningDisplay", lambda text, *a, **k: warnings.append(text), raising=False)
    ui = types.SimpleNamespace(reviewTable=Table(), reviewPendingLabel=types.SimpleNamespace(text=""),
                               reviewLabel=types.SimpleNamespace(text=""),
                               **{name: Button() for name in review_panel_module.DECISION_BUTTONS})
    review_panel_module.ReviewPanel(ui, lambda: None)
    ui.reviewAcceptButton.click()
    assert warnings and "Select one or more AI segments" in warnings[0]
    assert not (tmp_path / "audit.jsonl").exists()


def test_the_3d_view_buttons_result_is_kept_for_review(monkeypatch, runtime, tmp_path):
    """The AI Segment button of the 3D views: its result's segments become suggestions with drafts, run audited."""
    import slicer

    from aiportal.io.volumes import volume_node_from_array
    from aiportal.sample import make_ct_phantom

    monkeypatch.setenv("AIPORTAL_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("AIPORTAL_DRAFTS_DIR", str(tmp_path / "drafts"))
    view_buttons = import_panel(monkeypatch, "view_buttons")
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda *a, **k: None, raising=False)
    phantom = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.5, 3.5))
    volume = volume_node_from_array(runtime.scene, phantom.hu, phantom.ijk_to_ras, "phantom")
    started = []
    buttons = view_buttons.ThreeDViewSegmentButtons(
        lambda node, onProgress, onDone: started.append(node) or types.SimpleNamespace(running=True), "classic-ct")
    monkeypatch.setattr(view_buttons, "backgroundVolume", lambda: volume)
    buttons.onClicked()
    assert started == [volume]
    result = SegmentationJob(volume, "classic-ct", runtime=runtime).run()
    buttons._poller.running = False
    buttons._onDone(result, None)
    node = result.segmentation_node
    assert {review_state(node, s) for s in segment_ids(node)} == {"suggested"}
    assert len(list((tmp_path / "drafts").glob("*.npz"))) == len(segment_ids(node))
    (run,) = AuditLog(tmp_path / "audit.jsonl").records()
    assert (run["event"], run["input"], run["via"]) == ("ai_run", "phantom", "desktop")
