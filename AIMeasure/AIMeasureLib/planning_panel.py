"""AIMeasure's Planning section: proximity to the picked segment, a trajectory line re-checked live, and a
virtual resection of the picked segment by a markups plane or a drawn point list (the plan bundle and plan
vs outcome: :mod:`AIMeasureLib.planning_outputs_panel`).

The widget side only: the logic is :mod:`aiportal.planning.desktop` (a :class:`PlanningSession` kept by
AIMeasureLogic, so the structures are precomputed once per segmentation and a dragged end point is
re-checked in milliseconds).
"""

import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from AIMeasureLib.planning_outputs_panel import PlanningOutputsPanel


class PlanningPanel(VTKObservationMixin):
    """Connects the Planning section's widgets (``ui``) to the planning session of ``logic``.

    ``parameterNode`` and ``selectedSegmentID`` are callables: the widget's current parameter node and
    picked segment (both change while the module is open).
    """

    def __init__(self, ui, logic, parameterNode, selectedSegmentID) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self._parameterNode = parameterNode
        self._selectedSegmentID = selectedSegmentID
        self._trajectoryLine = None  # the planned path observed for live checks
        self.ui.proximityButton.connect("clicked(bool)", self.onProximityButton)
        self.ui.trajectoryLineSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onTrajectoryLineChanged)
        self.ui.resectButton.connect("clicked(bool)", self.onResectButton)
        self.outputs = PlanningOutputsPanel(ui, logic, parameterNode, selectedSegmentID)  # bundle, outcome

    def cleanup(self) -> None:
        self.removeObservers()

    def onProximityButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to measure proximity."), waitCursor=True):
            p = self._parameterNode()
            if not (p and p.inputSegmentation and p.inputVolume and self._selectedSegmentID()):
                raise ValueError(_("Pick a segmentation, its volume and the target segment."))
            self.ui.planningLabel.text = proximity(self.logic.planning, p.inputSegmentation, p.inputVolume,
                                                   self._selectedSegmentID(), p.alertThresholdMm)

    def onResectButton(self) -> None:
        """Virtual resection of the picked segment by the selected plane or drawn point list."""
        from aiportal.planning.desktop import resection_text

        with slicer.util.tryWithErrorDisplay(_("Failed to resect."), waitCursor=True):
            p = self._parameterNode()
            if not (p and p.inputSegmentation and p.inputVolume and self._selectedSegmentID()):
                raise ValueError(_("Pick a segmentation, its volume and the segment to resect."))
            result = self.logic.planning.resect_by_markups(p.inputSegmentation, p.inputVolume,
                                                           self._selectedSegmentID(), self.ui.cutSelector.currentNode())
            self.ui.planningLabel.text = resection_text(result)

    def onTrajectoryLineChanged(self, lineNode) -> None:
        if self._trajectoryLine is not None:
            self.removeObserver(self._trajectoryLine, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onTrajectory)
        self._trajectoryLine = lineNode
        if lineNode is not None:
            self.addObserver(lineNode, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onTrajectory)
        self.onTrajectory()

    def onTrajectory(self, caller=None, event=None) -> None:
        """Re-check the path on every move of an end point (the structures are precomputed once)."""
        p, line = self._parameterNode(), self._trajectoryLine
        if not (p and line and p.inputSegmentation and p.inputVolume and line.GetNumberOfControlPoints() == 2):
            return
        try:
            self.ui.planningLabel.text = trajectory(self.logic.planning, line, p.inputSegmentation, p.inputVolume,
                                                    p.alertThresholdMm)
        except Exception as error:  # shown in the panel: the surgeon keeps dragging
            self.ui.planningLabel.text = str(error)


def proximity(session, segmentation, volume, segmentID: str, thresholdMm: float) -> str:
    """Every other segment's closest approach to the picked one; a line markup per alert."""
    from aiportal.planning.desktop import add_closest_lines, proximity_text

    rows = session.proximity(segmentation, volume, segmentID, thresholdMm)
    add_closest_lines(slicer.mrmlScene, rows)
    return proximity_text(rows)


def trajectory(session, lineNode, segmentation, volume, thresholdMm: float) -> str:
    """The path (first point: entry, second: target) against every segment, as panel text."""
    from aiportal.planning.desktop import trajectory_text

    return trajectory_text(session.trajectory(segmentation, volume, lineNode, thresholdMm))
