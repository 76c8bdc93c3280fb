"""AISegmentPortal's Export section: the checked formats of the output segmentation into a folder, in the
background, with Cancel.

The widget side only: the export is :class:`aiportal.export.job.ExportJob` (the CLI's exporter), made by
AISegmentPortalLogic.createExportJob.
"""

from collections.abc import Callable

import slicer
from slicer.i18n import tr as _

from aiportal.export.exporter import ExportOptions, ExportResult


def exportOptions(ui) -> ExportOptions:
    """The Export section's choices as the exporter's options."""
    formats = [name for name, checkBox in (
        ("nrrd", ui.exportNrrdCheckBox), ("json", ui.exportJsonCheckBox), ("csv", ui.exportCsvCheckBox),
        ("seg", ui.exportSegCheckBox), ("sr", ui.exportSrCheckBox), ("rtstruct", ui.exportRtStructCheckBox),
        ("sc", ui.exportScCheckBox), ("estl", ui.exportEstlCheckBox), ("stl", ui.exportStlCheckBox),
        ("obj", ui.exportObjCheckBox)) if checkBox.checked]
    return ExportOptions(
        formats=tuple(formats),
        seg_type=ui.exportSegTypeComboBox.currentText,
        assign_missing_uids=ui.exportAssignUidsCheckBox.checked,
        surfaces_merged=ui.exportMergedSurfacesCheckBox.checked,
        coordinates=ui.exportCoordinatesComboBox.currentText,
        volume_true_surfaces=ui.exportVolumeTrueSurfacesCheckBox.checked,
    )


class ExportPanel:
    """Connects the Export section's widgets (``ui``) to ``logic``'s export job.

    ``parameterNode`` is a callable (the widget's current parameter node); ``followJob(job, onProgress,
    onDone)`` starts a job and follows it from the main thread; ``onProgress`` shows its progress.
    """

    def __init__(self, ui, logic, parameterNode: Callable, followJob: Callable, onProgress: Callable) -> None:
        self.ui = ui
        self.logic = logic
        self._parameterNode = parameterNode
        self._followJob = followJob
        self._onProgress = onProgress
        self._follower = None
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

    def cancel(self) -> None:
        if self._follower is not None:
            self._follower.cancel()

    def onExportButton(self) -> None:
        """Export the output segmentation in the checked formats into the chosen folder, in the background."""
        if self._follower is not None and self._follower.running:
            self._follower.cancel()
            return
        p = self._parameterNode()
        segmentationNode = p.outputSegmentation if p else None
        volumeNode = p.inputVolume if p else None
        folder = self.ui.exportFolderLineEdit.currentPath
        if not segmentationNode or not volumeNode or not folder:
            slicer.util.warningDisplay(_("Select the input volume, the output segmentation and an output folder."))
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            job = self.logic.createExportJob(segmentationNode, volumeNode, folder, exportOptions(self.ui))
            self._follower = self._followJob(job, self._onProgress,
                                             lambda result, error: self._onExportDone(result, error, folder))
            self.ui.exportButton.text = _("Cancel export")

    def _onExportDone(self, result: ExportResult | None, error: str | None, folder: str) -> None:
        self.ui.exportButton.text = _("Export")
        if error is not None:
            self.ui.statusLabel.text = _("Export failed.")
            slicer.util.errorDisplay(_("Export failed.") + "\n\n" + error)
        elif result is None:
            self.ui.statusLabel.text = _("Export cancelled: nothing was written.")
        else:
            self.ui.statusLabel.text = "\n".join(
                [_("Exported {count} file(s) to {folder}.").format(count=len(result.files), folder=folder),
                 *result.notes])
