"""AISegmentPortal's Review section: every AI segment is a suggestion the reader accepts, marks as edited or
rejects; each decision is audited with the Dice and volume change between the AI's draft and her segment.

The widget side only: the rules are :mod:`aiportal.review` (the same calls as the browser workspace),
the rows and lines shown are :mod:`aiportal.review_view`.
"""

import getpass
from collections.abc import Callable

import qt
import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from aiportal.audit import AuditLog, ai_run_fields
from aiportal.review import ReviewOutcome, remember_suggestions, review_segment
from aiportal.review_view import outcome_text, pending_text, review_rows
from aiportal.settings import Settings

#: The Review section's decision buttons (object names in the .ui).
DECISION_BUTTONS = ("reviewAcceptButton", "reviewEditedButton", "reviewRejectButton")


def auditLog() -> AuditLog:
    """The audit trail every face writes to (AIPORTAL_AUDIT_LOG overrides)."""
    return AuditLog(Settings.from_environment().audit_log)


def rememberResult(result, inputName: str, log: AuditLog | None = None) -> int:
    """A result is shown: keep its suggestions' digests and drafts, and audit the run (as the workspace does)."""
    stored = remember_suggestions(result.segmentation_node)
    (log or auditLog()).append("ai_run", **ai_run_fields(result, inputName), via="desktop")
    return stored


def decide(segmentationNode, segmentID: str, decision: str, log: AuditLog | None = None) -> ReviewOutcome:
    """The reader's decision on one AI segment, recorded under her login; a rejected segment is removed."""
    return review_segment(segmentationNode, segmentID, decision, log=log or auditLog(), user=getpass.getuser())


#: Segments added, removed or renamed elsewhere (the Segment Editor) refresh the table.
SEGMENT_EVENTS = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)


class ReviewPanel(VTKObservationMixin):
    """Connects the Review section's widgets (``ui``) to the shown segmentation (``segmentationNode()``)."""

    def __init__(self, ui, segmentationNode: Callable) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self._segmentationNode = segmentationNode
        self._observed = None
        # each button records its decision through aiportal.review (accepted becomes modified after an edit)
        self.ui.reviewAcceptButton.connect("clicked(bool)", lambda checked=False: self.onDecision("accepted"))
        self.ui.reviewEditedButton.connect("clicked(bool)", lambda checked=False: self.onDecision("modified"))
        self.ui.reviewRejectButton.connect("clicked(bool)", lambda checked=False: self.onDecision("rejected"))
        self.ui.reviewTable.connect("itemSelectionChanged()", self.onSelectionChanged)
        self.refresh()

    def showResult(self, result, inputName: str) -> None:
        """Called when a result is shown: its segments become suggestions waiting for a decision."""
        with slicer.util.tryWithErrorDisplay(_("Failed to keep the AI suggestions for review.")):
            rememberResult(result, inputName)
        self.ui.reviewLabel.text = ""
        self.refresh()
        self.ui.reviewCollapsibleButton.collapsed = False

    def cleanup(self) -> None:
        self.removeObservers()

    def _observe(self, node) -> None:
        if node is self._observed:
            return
        if self._observed is not None:
            for event in SEGMENT_EVENTS:
                self.removeObserver(self._observed, event, self.refresh)
        self._observed = node
        if node is not None:
            for event in SEGMENT_EVENTS:
                self.addObserver(node, event, self.refresh)

    def refresh(self, caller=None, event=None) -> None:
        """One row per AI segment of the shown segmentation: its name and review state."""
        node = self._segmentationNode()
        self._observe(node)
        rows = review_rows(node)
        table = self.ui.reviewTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            nameItem = qt.QTableWidgetItem(row.name)
            nameItem.setData(qt.Qt.UserRole, row.segment_id)
            table.setItem(index, 0, nameItem)
            table.setItem(index, 1, qt.QTableWidgetItem(row.state))
        self.ui.reviewPendingLabel.text = pending_text(rows)

    def selectedSegmentIDs(self) -> list[str]:
        table = self.ui.reviewTable
        indexes = sorted({item.row() for item in table.selectedItems()})
        return [table.item(index, 0).data(qt.Qt.UserRole) for index in indexes]

    def onSelectionChanged(self) -> None:
        """One picked row becomes the Segment Editor's selected segment, ready to be edited before a decision."""
        node, segmentIDs = self._segmentationNode(), self.selectedSegmentIDs()
        if node is not None and len(segmentIDs) == 1:
            selectInSegmentEditors(node, segmentIDs[0])

    def onDecision(self, decision: str) -> None:
        node, segmentIDs = self._segmentationNode(), self.selectedSegmentIDs()
        if node is None or not segmentIDs:
            slicer.util.warningDisplay(_("Select one or more AI segments in the Review table first."))
            return
        lines = []
        with slicer.util.tryWithErrorDisplay(_("The review decision was not recorded.")):
            for segmentID in segmentIDs:
                lines.append(outcome_text(decide(node, segmentID, decision)))
        self.ui.reviewLabel.text = "\n".join(lines)
        self.refresh()


def selectInSegmentEditors(segmentationNode, segmentID: str) -> int:
    """Select the segment in every Segment Editor that edits this segmentation; returns how many did."""
    scene = segmentationNode.GetScene()
    editors = [scene.GetNthNodeByClass(index, "vtkMRMLSegmentEditorNode")
               for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode"))] if scene else []
    editing = [editor for editor in editors if editor.GetSegmentationNode() is segmentationNode]
    for editor in editing:
        editor.SetSelectedSegmentID(segmentID)
    return len(editing)


def runSelfTest(testCase, result, log: AuditLog) -> None:
    """The module self-test's review: accept one suggestion untouched (Dice 1.0), reject another (removed)."""
    segmentationNode = result.segmentation_node
    testCase.assertGreater(rememberResult(result, "phantom", log), 0)
    rows = review_rows(segmentationNode)
    testCase.assertTrue(rows and all(row.state == "suggested" for row in rows))
    accepted = decide(segmentationNode, rows[0].segment_id, "accepted", log)
    testCase.assertEqual((accepted.decision, accepted.record["draft_dice"]), ("accepted", 1.0))
    rejected = decide(segmentationNode, rows[-1].segment_id, "rejected", log)
    testCase.assertTrue(rejected.removed)
    testCase.assertIsNone(segmentationNode.GetSegmentation().GetSegment(rows[-1].segment_id))
    testCase.assertEqual([r["decision"] for r in log.records() if r["event"] == "review"], ["accepted", "rejected"])
