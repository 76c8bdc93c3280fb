import os
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsLineNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# `import aiportal` must work in two layouts: in an installed extension CMake puts the package
# next to this file (already on sys.path); in a source checkout whose module folders were added
# to "Additional module paths" it sits one folder up, in the repository root.
_repositoryRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_repositoryRoot, "aiportal")) and _repositoryRoot not in sys.path:
    sys.path.append(_repositoryRoot)

from AIMeasureLib.followup_panel import FollowUpSeriesPanel
from AIMeasureLib.followup_panel import runSelfTest as followUpSeriesSelfTest
from AIMeasureLib.planning_panel import PlanningPanel  # noqa: E402 (the Planning section)

from aiportal.desktop_jobs import desktop_jobs, follow
from aiportal.desktop_requirements import ensure_feature

#: How often the main thread polls a running measurement for progress.
POLL_INTERVAL_MS = 100


#
# AIMeasure
#


class AIMeasure(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AI Measure")
        self.parent.categories = [_("AI Portal"), translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["AI Segment Portal maintainers (AI Segment Portal project)"]
        # _() function marks text as translatable to other languages
        self.parent.helpText = _("""
Measure segmented lesions: exact RECIST 1.1 long/short axes, maximum 3D diameter and volume; a
copilot that checks manual caliper lines; follow-up comparison with a prior study (matched lesions,
change and RECIST response); and report output (table, text, PNG key images).
See the <a href="https://github.com/ai-segment-portal/SlicerAIPortal#aimeasure">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the AI Segment Portal contributors, on 3D Slicer's scripted module template.
""")
        # No measurement may outlive the application
        slicer.app.connect("aboutToQuit()", lambda: desktop_jobs(slicer.mrmlScene).application_quitting())


#
# AIMeasureParameterNode
#


@parameterNodeWrapper
class AIMeasureParameterNode:
    """
    The parameters needed by module.

    inputSegmentation - The segments to measure (the current study).
    inputVolume - The image they were drawn on.
    lymphNode - Measure the selected segment as a lymph node (short axis).
    manualLine - A caliper line the reader placed, checked by the copilot.
    priorSegmentation, priorVolume - The prior study, for follow-up (same frame of reference, or
        aligned in AIRegister with the transform hardened).
    outputFolder - Where "Save report" writes tables and key images.
    trajectoryLine, alertThresholdMm - Planning: a path checked live, and the proximity alert distance.
    """

    inputSegmentation: vtkMRMLSegmentationNode
    inputVolume: vtkMRMLScalarVolumeNode
    lymphNode: bool = False
    manualLine: vtkMRMLMarkupsLineNode
    priorSegmentation: vtkMRMLSegmentationNode
    priorVolume: vtkMRMLScalarVolumeNode
    outputFolder: Path
    trajectoryLine: vtkMRMLMarkupsLineNode
    alertThresholdMm: float = 5.0


#
# AIMeasureWidget
#


class AIMeasureWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedLine = None
        self._lastCheck = None
        self._follower = None  # the running measurement, comparison or report

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AIMeasure.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. Make sure that in Qt designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal in is connected to each MRML widget's.
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AIMeasureLogic()

        # Connections

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # the segment picker lists the segments of the selected segmentation
        self.ui.inputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                                  self.ui.segmentSelector.setCurrentNode)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.vesselButton.connect("clicked(bool)", self.onVesselButton)
        self.ui.manualLineSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onManualLineChanged)
        self.ui.applySuggestionButton.connect("clicked(bool)", self.onApplySuggestion)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.copyToReportButton.connect("clicked(bool)", self.onCopyToReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.planningPanel = PlanningPanel(self.ui, self.logic, lambda: self._parameterNode, self._selectedSegmentID)
        self.followUpSeries = FollowUpSeriesPanel(self)  # N time points: AIMeasureLib/followup_panel.py

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._follower is not None:
            self._follower.cancel()  # its result is never applied
        self.planningPanel.cleanup()
        self.followUpSeries.logic.cleanup()  # the files of the priors fetched from a PACS
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # Parameter node will be reset, do not use it anymore
        self._observeLine(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.

        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputSegmentation:
            firstSegmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentationNode:
                self._parameterNode.inputSegmentation = firstSegmentationNode
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: AIMeasureParameterNode | None) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        inputs = bool(self._parameterNode and self._parameterNode.inputSegmentation and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = inputs
        self.ui.applyButton.toolTip = _("Measure the segments") if inputs else _("Select a segmentation and a volume")
        self.ui.vesselButton.enabled = inputs
        self.ui.compareButton.enabled = inputs and bool(self._parameterNode.priorSegmentation
                                                        and self._parameterNode.priorVolume)
        self.ui.applySuggestionButton.enabled = self._lastCheck is not None and not self._lastCheck.ok

    def _selectedSegmentID(self) -> str | None:
        """The segment picked in the panel; None means every segment."""
        return self.ui.segmentSelector.currentSegmentID() or None

    def _runInBackground(self, job, finish, onResult, failure: str) -> None:
        """Follow a started job; ``finish(job)`` applies its result to the scene, ``onResult`` shows it."""
        if self._follower is not None and self._follower.running:
            self._follower.cancel()

        def onDone(result, error):
            if error is not None:
                self.ui.statusLabel.text = failure
                slicer.util.errorDisplay(failure + "\n\n" + error)
            elif result is None:
                self.ui.statusLabel.text = _("Cancelled.")
            else:
                onResult(result)

        def onProgress(fraction, stage):
            self.ui.statusLabel.text = stage

        self._follower = follow(job, slicer.mrmlScene, qt.QTimer(), onProgress, onDone, finish, POLL_INTERVAL_MS)

    def onApplyButton(self) -> None:
        """Measure the picked segment (or all) in the background, then show the table and the axis lines."""
        with slicer.util.tryWithErrorDisplay(_("Failed to compute measurements."), waitCursor=True):
            p = self._parameterNode
            segmentation = p.inputSegmentation
            job = self.logic.startMeasure(segmentation, p.inputVolume, self._selectedSegmentID(), p.lymphNode)
            self._runInBackground(job, lambda done: self.logic.applyMeasurements(segmentation, *done.finish()),
                                  self._showMeasurements, _("Failed to compute measurements."))

    def _showMeasurements(self, table) -> None:
        self.ui.resultsTableView.setMRMLTableNode(table)
        self.ui.statusLabel.text = "\n".join(self.logic.warnings()) or _("Measured {count} lesion(s).").format(
            count=len(self.logic.measurements))

    def onVesselButton(self) -> None:
        """Measure the picked segment as a vessel in the background: centreline, largest diameter and its lines."""
        with slicer.util.tryWithErrorDisplay(_("Failed to measure the vessel."), waitCursor=True):
            p = self._parameterNode
            if not self._selectedSegmentID():
                raise ValueError(_("Pick the vessel's segment."))
            segmentation = p.inputSegmentation
            job = self.logic.startVesselMeasure(segmentation, p.inputVolume, self._selectedSegmentID())
            self._runInBackground(job, lambda done: self.logic.applyVessel(segmentation, done.finish()),
                                  self._showVessel, _("Failed to measure the vessel."))

    def _showVessel(self, summary: str) -> None:
        self.ui.vesselLabel.text = summary

    # -- copilot ---------------------------------------------------------------------------------
    def _observeLine(self, lineNode) -> None:
        if self._observedLine is not None:
            self.removeObserver(self._observedLine, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onLineModified)
        self._observedLine = lineNode
        if lineNode is not None:
            self.addObserver(lineNode, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onLineModified)

    def onManualLineChanged(self, lineNode) -> None:
        self._observeLine(lineNode)
        self.onLineModified()

    def onLineModified(self, caller=None, event=None) -> None:
        """Re-check the line on every move of an endpoint (the lesion's exact axes are cached)."""
        p = self._parameterNode
        self._lastCheck = None
        if not (p and p.manualLine and p.inputSegmentation and p.inputVolume):
            self.ui.copilotLabel.text = _("Pick a segmentation, a volume and a line.")
        elif p.manualLine.GetNumberOfControlPoints() < 2:
            self.ui.copilotLabel.text = _("Place both endpoints of the line.")
        else:
            try:
                self._lastCheck = self.logic.checkLine(p.manualLine, p.inputSegmentation, p.inputVolume,
                                                       self._selectedSegmentID())
                self.ui.copilotLabel.text = self._lastCheck.summary()
            except Exception as error:  # shown in the panel: the reader keeps drawing
                self.ui.copilotLabel.text = str(error)
        self._checkCanApply()

    def onApplySuggestion(self) -> None:
        if self._lastCheck is not None and self._parameterNode.manualLine:
            self.logic.applySuggestion(self._parameterNode.manualLine, self._lastCheck)

    # -- follow-up and report ----------------------------------------------------------------------
    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compare the studies."), waitCursor=True):
            p = self._parameterNode
            scene = p.inputSegmentation.GetScene()
            job = self.logic.startCompare(p.priorSegmentation, p.priorVolume, p.inputSegmentation, p.inputVolume)
            self._runInBackground(job, lambda done: self.logic.applyFollowUp(scene, done.finish()),
                                  self._showFollowUp, _("Failed to compare the studies."))

    def _showFollowUp(self, table) -> None:
        self.ui.followUpTableView.setMRMLTableNode(table)
        self.ui.responseLabel.text = table.GetDescription()
        self.ui.statusLabel.text = _("Compared.")

    def onCopyToReport(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.reportText())
        self.ui.statusLabel.text = _("Report text copied to the clipboard.")

    def onSaveReport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to save the report."), waitCursor=True):
            p = self._parameterNode
            if not p.outputFolder or str(p.outputFolder) in ("", "."):
                raise ValueError(_("Choose an output folder."))
            folder = p.outputFolder
            job = self.logic.startSaveReport(Path(folder), p.inputSegmentation, p.inputVolume)
            self._runInBackground(job, None, lambda written: self._showWritten(written, folder),
                                  _("Failed to save the report."))

    def _showWritten(self, written: list, folder) -> None:
        self.ui.statusLabel.text = _("Wrote {count} files in {folder}").format(count=len(written), folder=folder)


#
# AIMeasureLogic
#


class AIMeasureLogic(ScriptedLoadableModuleLogic):
    """Thin facade over the GUI-free measurement code in :mod:`aiportal.measure`.

    Can be used without GUI widget. Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.measurements = []
        self.skipped = {}
        self.followUp = None
        self.vessel = None
        self._recistCache = {}
        from aiportal.planning.desktop import PlanningSession

        self.planning = PlanningSession()  # label grid and trajectory planner, rebuilt when the inputs change

    def getParameterNode(self):
        return AIMeasureParameterNode(super().getParameterNode())

    def startMeasure(self, inputSegmentation, inputVolume, segmentID: str | None = None, lymphNode: bool = False):
        """
        Start measuring one segment (or all) of inputSegmentation on inputVolume in a worker thread (on copies
        made now) and return the job; ``applyMeasurements(inputSegmentation, *job.finish())`` on the main thread.
        """
        from aiportal.measure.jobs import measure_job

        if not inputSegmentation or not inputVolume:
            raise ValueError(_("Select a segmentation and a volume."))
        ensure_feature("measure", slicer, requester=_("AI Measure"))
        job = measure_job(inputSegmentation, inputVolume, segmentID, lymphNode)
        job.start()
        return job

    def applyMeasurements(self, inputSegmentation, measurements: list, skipped: dict):
        """Place the axis lines of the measurements and return the results table node (main thread)."""
        from aiportal.measure.recist import add_axis_lines
        from aiportal.measure.report import add_measurement_table

        self.measurements, self.skipped = measurements, skipped
        scene = inputSegmentation.GetScene()
        for measurement in self.measurements:
            add_axis_lines(scene, measurement, inputSegmentation)
        table = scene.GetFirstNodeByName("RECIST measurements")
        return add_measurement_table(scene, self.measurements, table_node=table if table else None)

    def process(self, inputSegmentation, inputVolume, segmentID: str | None = None, lymphNode: bool = False):
        """
        Measure one segment (or all) of inputSegmentation on inputVolume, place the axis lines and
        return the results table node: the panel's job, waited for.
        """
        job = self.startMeasure(inputSegmentation, inputVolume, segmentID, lymphNode)
        job.wait()
        return self.applyMeasurements(inputSegmentation, *job.finish())

    def warnings(self) -> list[str]:
        """What the reader must know about the last measurement: lesions split, speckle dropped, refusals."""
        from aiportal.measure.report import measurement_warnings

        return measurement_warnings(self.measurements, self.skipped)

    def startVesselMeasure(self, inputSegmentation, inputVolume, segmentID: str):
        """Start measuring one segment as a vessel (aiportal.vessels) in a worker thread, on copies made now;
        ``applyVessel(inputSegmentation, job.finish())`` on the main thread."""
        from aiportal.measure.jobs import vessel_job

        if not inputSegmentation or not inputVolume:
            raise ValueError(_("Select a segmentation and a volume."))
        ensure_feature("vessels", slicer, requester=_("AI Measure"))
        job = vessel_job(inputSegmentation, inputVolume, segmentID)
        job.start()
        return job

    def applyVessel(self, inputSegmentation, vessel) -> str:
        """Place the vessel's centreline curve and the lines of its largest diameter; return the summary with
        any warning (main thread)."""
        from aiportal.vessels.report import add_vessel_markups

        self.vessel = vessel
        add_vessel_markups(inputSegmentation.GetScene(), vessel, inputSegmentation)
        return "\n".join([vessel.summary()] + [_("WARNING: ") + w for w in vessel.warnings])

    def measureVessel(self, inputSegmentation, inputVolume, segmentID: str) -> str:
        """Measure one segment as a vessel and place its markups: the panel's job, waited for."""
        job = self.startVesselMeasure(inputSegmentation, inputVolume, segmentID)
        job.wait()
        return self.applyVessel(inputSegmentation, job.finish())

    def checkLine(self, lineNode, segmentation, volume, segmentID: str | None = None):
        """Copilot check of a manual line; the segment is the line's own (set by the axis lines) or the picked one."""
        from aiportal.measure.copilot import check_line_node, line_kind
        from aiportal.measure.recist import (
            LESION_ATTRIBUTE,
            SEGMENT_ID_ATTRIBUTE,
            SEGMENTATION_ID_ATTRIBUTE,
            measure_lesions,
        )

        if lineNode.GetAttribute(SEGMENTATION_ID_ATTRIBUTE) == segmentation.GetID():
            segmentID = lineNode.GetAttribute(SEGMENT_ID_ATTRIBUTE) or segmentID
        if not segmentID:
            raise ValueError(_("Pick the segment the line measures."))
        key = (segmentation.GetID(), segmentID, volume.GetID())
        modified = segmentation.GetSegmentation().GetSegment(segmentID).GetRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()).GetMTime()
        if self._recistCache.get(key, (None, None))[0] != modified:
            self._recistCache[key] = (modified, measure_lesions(segmentation, segmentID, volume).measurements)
        lesions = self._recistCache[key][1]
        # the line's own lesion (axis lines carry it); else the copilot takes the lesion nearest the line
        index = lineNode.GetAttribute(LESION_ATTRIBUTE)
        recist = next((m for m in lesions if index and str(m.lesion_index) == index), None)
        longAxis = None
        if line_kind(lineNode) == "short":  # its partner long axis, when the reader drew one
            longAxis = next((node for node in slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode")
                             if node is not lineNode and node.GetAttribute(SEGMENT_ID_ATTRIBUTE) == segmentID
                             and node.GetAttribute(LESION_ATTRIBUTE) == lineNode.GetAttribute(LESION_ATTRIBUTE)
                             and line_kind(node) == "long"), None)
        return check_line_node(lineNode, segmentation, segmentID, volume, long_axis_node=longAxis, recist=recist)

    def applySuggestion(self, lineNode, check) -> None:
        from aiportal.measure.copilot import apply_suggestion

        apply_suggestion(lineNode, check)

    def startCompare(self, priorSegmentation, priorVolume, currentSegmentation, currentVolume):
        """Start the follow-up comparison in a worker thread (on copies made now); ``applyFollowUp`` its result."""
        from aiportal.measure.jobs import compare_job

        ensure_feature("measure", slicer, requester=_("AI Measure"))
        job = compare_job(priorSegmentation, priorVolume, currentSegmentation, currentVolume)
        job.start()
        return job

    def applyFollowUp(self, scene, followUp):
        """Keep the follow-up for the report and return its table node (main thread)."""
        from aiportal.measure.followup import add_follow_up_table

        self.followUp = followUp
        return add_follow_up_table(scene, followUp)

    def compare(self, priorSegmentation, priorVolume, currentSegmentation, currentVolume):
        """Follow-up: lesions matched by position (same frame of reference), change and RECIST response."""
        job = self.startCompare(priorSegmentation, priorVolume, currentSegmentation, currentVolume)
        job.wait()
        return self.applyFollowUp(currentSegmentation.GetScene(), job.finish())

    def reportText(self) -> str:
        from aiportal.measure.report import report_text

        return report_text(self.measurements, self.followUp)

    def startSaveReport(self, folder: Path, segmentation, volume):
        """Start writing measurements.csv/json, follow-up tables (when compared) and one PNG key image per lesion."""
        from aiportal.measure.jobs import save_report_job

        job = save_report_job(folder, self.measurements, self.skipped, self.followUp, segmentation, volume)
        job.start()
        return job

    def saveReport(self, folder: Path, segmentation, volume) -> list:
        """The files of :meth:`startSaveReport`, waited for."""
        job = self.startSaveReport(folder, segmentation, volume)
        job.wait()
        return job.finish()


#
# AIMeasureTest
#


class AIMeasureTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_AIMeasure1()
        self.setUp()
        self.test_AIMeasurePhantom()
        self.setUp()
        followUpSeriesSelfTest(self)

    def test_AIMeasure1(self):
        """A painted disc is measured (axes, table), and a shortened manual line is flagged and corrected."""
        import numpy as np

        self.delayDisplay("Starting the test")
        logic = AIMeasureLogic()
        parameterNode = logic.getParameterNode()
        self.assertIsNone(parameterNode.inputSegmentation)
        with self.assertRaises(ValueError):
            logic.process(None, None)

        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
        voxels = np.zeros((5, 64, 64), dtype=np.int16)
        k, j, i = np.ogrid[:5, :64, :64]
        voxels[np.broadcast_to((j - 32) ** 2 + (i - 32) ** 2 <= 100, voxels.shape)] = 100  # radius 10, each slice
        slicer.util.updateVolumeFromArray(volume, voxels)
        labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        slicer.util.updateVolumeFromArray(labels, (voxels > 0).astype(np.uint8))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, segmentation)
        table = logic.process(segmentation, volume)
        self.assertEqual(table.GetNumberOfRows(), 1)
        self.assertAlmostEqual(logic.measurements[0].long_axis_mm, 20.0, places=6)

        line = slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode")[0]
        line.SetNthControlPointPositionWorld(1, *((np.array(line.GetNthControlPointPositionWorld(0))
                                                   + np.array(line.GetNthControlPointPositionWorld(1))) / 2))
        check = logic.checkLine(line, segmentation, volume)
        self.assertFalse(check.ok)
        logic.applySuggestion(line, check)
        self.assertTrue(logic.checkLine(line, segmentation, volume).ok)
        self.delayDisplay("Test passed")

    def test_AIMeasurePhantom(self):
        """The project's CT phantom, segmented by classic-ct, measured in the background as Testing/test_desktop_jobs.py
        does: the panel's job gives what the direct call gives."""
        from aiportal.io.volumes import volume_node_from_array
        from aiportal.measure.report import measure_segmentation
        from aiportal.sample import make_ct_phantom
        from aiportal.segment import SegmentationJob

        phantom = make_ct_phantom(shape=(24, 64, 64), spacing=(8.0, 5.0, 5.0))
        volume = volume_node_from_array(slicer.mrmlScene, phantom.hu, phantom.ijk_to_ras, "phantom")
        volume.SetAttribute("DICOM.Modality", "CT")
        segmentation = SegmentationJob(volume, "classic-ct", executor="thread").run().segmentation_node
        logic = AIMeasureLogic()
        table = logic.process(segmentation, volume)
        direct, skipped = measure_segmentation(segmentation, volume)
        self.assertTrue(direct)
        self.assertEqual(table.GetNumberOfRows(), len(direct))
        self.assertEqual([m.long_axis_mm for m in logic.measurements], [m.long_axis_mm for m in direct])
        self.assertEqual(logic.skipped, skipped)
        self.delayDisplay("Test passed")
