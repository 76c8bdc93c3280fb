"""AISegmentPortal's "AI Segment" button in the controller bar of every 3D view.

A click segments the volume shown in the red slice view with the module's default model: the job is
started and followed by the module (``startPoller``), progress goes to the status bar; the result's
segments are suggestions kept for review (drafts, audited run) as in the module's Review section.
"""

from collections.abc import Callable

import qt
import slicer
from slicer.i18n import tr as _

from aiportal.segment import show_segmentation_3d
from AISegmentPortalLib.review_panel import rememberResult

#: Object name of the "AI Segment" button in the 3D view controller bars (to find it again).
VIEW_BUTTON_OBJECT_NAME = "AISegmentPortalThreeDViewButton"


class ThreeDViewSegmentButtons:
    """An "AI Segment" button in the controller bar of every 3D view.

    A click segments the background volume of the red slice view with the default model, with
    progress in the status bar; a second click while it runs cancels it.
    """

    def __init__(self, startPoller: Callable, modelId: str) -> None:
        """startPoller(volumeNode, onProgress, onDone): start ``modelId`` on the volume and follow its job."""
        self._startPoller = startPoller
        self._modelId = modelId
        self._poller = None
        self._volumeName = ""
        self._installed = False

    def install(self) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (batch mode, tests run with --no-main-window)
            return
        self.addToViews()
        if not self._installed:
            # 3D views are created when a layout first shows them
            layoutManager.connect("layoutChanged(int)", self.addToViews)
            self._installed = True

    def addToViews(self, layout: int | None = None) -> None:
        """Add the button to every 3D view that does not have it yet."""
        layoutManager = slicer.app.layoutManager()
        for index in range(layoutManager.threeDViewCount):
            controller = layoutManager.threeDWidget(index).threeDController()
            if slicer.util.findChildren(widget=controller.barWidget(), name=VIEW_BUTTON_OBJECT_NAME):
                continue
            button = qt.QToolButton()
            button.objectName = VIEW_BUTTON_OBJECT_NAME
            button.autoRaise = True
            button.connect("clicked()", self.onClicked)
            controller.barLayout().addWidget(button)
        self._updateButtons()

    def buttons(self) -> list:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return []
        found = []
        for index in range(layoutManager.threeDViewCount):
            barWidget = layoutManager.threeDWidget(index).threeDController().barWidget()
            found.extend(slicer.util.findChildren(widget=barWidget, name=VIEW_BUTTON_OBJECT_NAME))
        return found

    def onClicked(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.cancel()
            slicer.util.showStatusMessage(_("AI Segment: cancelling..."))
            return
        volumeNode = backgroundVolume()
        if volumeNode is None:
            slicer.util.warningDisplay(
                _("Show a volume in the red slice view first: AI Segment segments the volume shown there.")
            )
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self._poller = self._startPoller(volumeNode, self._onProgress, self._onDone)
            self._volumeName = volumeNode.GetName()
        self._updateButtons()

    def _onProgress(self, fraction: float, stage: str) -> None:
        slicer.util.showStatusMessage(
            _("AI Segment: {stage} ({percent}%)").format(stage=stage, percent=round(100 * fraction))
        )

    def _onDone(self, result, error: str | None) -> None:
        self._updateButtons()
        if error is not None:
            slicer.util.showStatusMessage(_("AI Segment failed."), 5000)
            slicer.util.errorDisplay(_("Segmentation failed.") + "\n\n" + error)
        elif result is None:
            slicer.util.showStatusMessage(_("AI Segment cancelled."), 5000)
        else:
            show_segmentation_3d(result.segmentation_node, True)
            with slicer.util.tryWithErrorDisplay(_("Failed to keep the AI suggestions for review.")):
                rememberResult(result, self._volumeName)  # reviewed in the module's Review section
            slicer.util.showStatusMessage(
                _("AI Segment: {name} is ready.").format(name=result.segmentation_node.GetName()), 5000
            )

    def _updateButtons(self) -> None:
        running = self._poller is not None and self._poller.running
        for button in self.buttons():
            button.text = _("Cancel") if running else _("AI Segment")
            button.toolTip = (
                _("Stop the running AI segmentation")
                if running
                else _("Segment the volume shown in the red slice view with the default model ({model})").format(
                    model=self._modelId
                )
            )


def backgroundVolume():
    """The scalar volume shown as background in the red slice view, if any."""
    layoutManager = slicer.app.layoutManager()
    sliceWidget = layoutManager.sliceWidget("Red") if layoutManager else None
    if sliceWidget is None:
        return None
    volumeId = sliceWidget.mrmlSliceCompositeNode().GetBackgroundVolumeID()
    volumeNode = slicer.mrmlScene.GetNodeByID(volumeId) if volumeId else None
    return volumeNode if volumeNode and volumeNode.IsA("vtkMRMLScalarVolumeNode") else None
