"""AIMeasure's Planning section, second half: the plan bundle (folder for navigation / 3D printing) and the
plan compared with the post-operative outcome.

The widget side only: the logic is :class:`aiportal.planning.desktop.PlanningSession` (``export_bundle``,
``outcome``), the same functions the CLI's ``aiportal plan bundle`` / ``plan outcome`` call.
"""

from pathlib import Path

import slicer
from slicer.i18n import tr as _


class PlanningOutputsPanel:
    """Connects the bundle and outcome widgets (``ui``) to the planning session of ``logic``; ``parameterNode``
    and ``selectedSegmentID`` are callables (the widget's current parameter node and picked segment)."""

    def __init__(self, ui, logic, parameterNode, selectedSegmentID) -> None:
        self.ui = ui
        self.logic = logic
        self._parameterNode = parameterNode
        self._selectedSegmentID = selectedSegmentID
        self._outcomeTable = None
        # the scene is set here rather than by .ui connections (each call is checked against Slicer's headers)
        self.ui.outcomeVolumeSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.outcomeSegmentationSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.outcomeLineSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.outcomePlaneSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.outcomeTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.exportBundleButton.connect("clicked(bool)", self.onExportBundle)
        self.ui.compareOutcomeButton.connect("clicked(bool)", self.onCompareOutcome)

    def _inputs(self, what: str):
        p = self._parameterNode()
        if not (p and p.inputSegmentation and p.inputVolume and self._selectedSegmentID()):
            raise ValueError(_("Pick a segmentation, its volume and {what}.").format(what=what))
        return p

    def onExportBundle(self) -> None:
        """STL of every segment, the measurements, the trajectory as markups, SEG + SR for a DICOM volume."""
        with slicer.util.tryWithErrorDisplay(_("Failed to export the plan bundle."), waitCursor=True):
            p = self._inputs(_("the target segment"))
            folder = self.ui.bundleFolderSelector.currentPath
            if not folder:
                raise ValueError(_("Choose the bundle folder (new or empty)."))
            dicomVolume = dicomLoadedVolume(p.inputVolume)
            manifest = self.logic.planning.export_bundle(
                p.inputSegmentation, p.inputVolume, Path(folder), self._selectedSegmentID(), p.alertThresholdMm,
                line_node=p.trajectoryLine, cut_node=self.ui.cutSelector.currentNode(), dicom_volume=dicomVolume)
            lines = [_("Plan bundle: {count} files in {folder}").format(count=len(manifest["files"]) + 1,
                                                                         folder=folder)]
            if dicomVolume is None:
                lines.append(_("No DICOM SEG/SR: the volume was not loaded from DICOM."))
            lines += [f"WARNING: {warning}" for warning in manifest["warnings"]] + list(manifest["notes"])
            self.ui.planningLabel.text = "\n".join(lines)

    def onCompareOutcome(self) -> None:
        """Register the post-operative CT, compare its segments with the planned ones, show the table."""
        from aiportal.planning.scene_plan import deviation_text, outcome_table_node

        with slicer.util.tryWithErrorDisplay(_("Failed to compare the plan with the outcome."), waitCursor=True):
            p = self._inputs(_("a segment"))
            actualVolume = self.ui.outcomeVolumeSelector.currentNode()
            result = self.logic.planning.outcome(
                p.inputSegmentation, p.inputVolume, self.ui.outcomeSegmentationSelector.currentNode(), actualVolume,
                mode="auto" if self.ui.registerOutcomeCheckBox.checked else "no", planned_line=p.trajectoryLine,
                actual_line=self.ui.outcomeLineSelector.currentNode(), planned_cut=self.ui.cutSelector.currentNode(),
                actual_plane=self.ui.outcomePlaneSelector.currentNode(),
                planned_source=dicomSource(p.inputVolume), actual_source=dicomSource(actualVolume))
            if self._outcomeTable is not None and self._outcomeTable.GetScene() is None:
                self._outcomeTable = None  # the scene was closed
            self._outcomeTable = outcome_table_node(slicer.mrmlScene, result, self._outcomeTable)
            self.ui.outcomeTableView.setMRMLTableNode(self._outcomeTable)
            self.ui.planningLabel.text = deviation_text(result)


def dicomFiles(volumeNode) -> list:
    """The DICOM files of a volume loaded by Slicer's DICOM module (none for a file-based volume)."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode else []
    database = getattr(slicer, "dicomDatabase", None)
    return [database.fileForInstance(uid) for uid in uids] if uids and database else []


def dicomLoadedVolume(volumeNode):
    """The volume with its DICOM series (for the SEG and SR), or None."""
    from aiportal.planning.plan_export import loaded_dicom_volume

    return loaded_dicom_volume(volumeNode, dicomFiles(volumeNode))


def dicomSource(volumeNode):
    """The volume's DICOM series description (its frame of reference), or None."""
    loaded = dicomLoadedVolume(volumeNode)
    return loaded.source if loaded is not None else None
