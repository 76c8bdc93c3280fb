import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
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

from AISegmentPortalLib.export_panel import ExportPanel  # noqa: E402 (the Export section)
from AISegmentPortalLib.review_panel import ReviewPanel  # noqa: E402 (the Review section)
from AISegmentPortalLib.review_panel import runSelfTest as reviewSelfTest
from AISegmentPortalLib.server_panel import ServerPanel  # noqa: E402 (the Server section)
from AISegmentPortalLib.view_buttons import VIEW_BUTTON_OBJECT_NAME, ThreeDViewSegmentButtons

from aiportal.background import FunctionJob
from aiportal.desktop_jobs import JobFollower, desktop_jobs, follow
from aiportal.desktop_requirements import ensure_feature
from aiportal.export.exporter import DICOM_FORMATS, ExportOptions, ExportResult
from aiportal.export.job import ExportJob
from aiportal.models.catalog import get_catalog
from aiportal.prompts import boxes_from_roi_nodes
from aiportal.remote import RemoteSegmentationJob
from aiportal.segment import DEVICES, SegmentationJob, show_segmentation_3d
from aiportal.segmentation import describe_segments
from aiportal.weights.offer import install_function, weights_offer

if TYPE_CHECKING:
    from aiportal.segment import SegmentationResult
    from aiportal.server.client import ServerClient

#: Model run by the "AI Segment" button of the 3D views and preselected in the module.
DEFAULT_MODEL_ID = "classic-ct"
#: How often the main thread polls a running job for progress.
POLL_INTERVAL_MS = 100



#
# AISegmentPortal
#


class AISegmentPortal(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AI Segment Portal")
        self.parent.categories = [_("AI Portal"), translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["AI Segment Portal maintainers (AI Segment Portal project)"]
        # _() function marks text as translatable to other languages
        self.parent.helpText = _("""
Segment a volume with a model from the catalog. The run happens in the background with live
progress and can be cancelled; the result is an editable segmentation with coded (SNOMED CT)
segments and a record of the model, version, weights checksum and device used.
Every 3D view also gets an <b>AI Segment</b> button that segments the volume shown in the red slice view.
See the <a href="https://github.com/ai-segment-portal/SlicerAIPortal#aisegmentportal">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the AI Segment Portal contributors, on 3D Slicer's scripted module template.
""")

        # The view buttons need the main window's layout manager, which exists only after startup
        slicer.app.connect("startupCompleted()", installThreeDViewButtons)
        # No job may outlive the application: a model's process runs in a session of its own
        slicer.app.connect("aboutToQuit()", cancelDesktopJobs)


#
# Dependencies
#


def ensurePythonRequirements(feature: str) -> None:
    """Install the Python packages ``feature`` needs that Slicer's Python lacks; raise when it cannot run here.

    Nothing is asked when everything is installed. Otherwise the user is asked once: Slicer 5.12+
    installs with ``slicer.packaging.pip_ensure``, older versions with ``slicer.util.pip_install``; a
    package Slicer bundles is never changed (see :mod:`aiportal.desktop_requirements`).
    """
    ensure_feature(feature, slicer, requester=_("AI Segment Portal"))


def cancelDesktopJobs() -> None:
    """Cancel every running job of every module and wait until it stopped (the application quits)."""
    desktop_jobs(slicer.mrmlScene).application_quitting()


#
# AISegmentPortalParameterNode
#


@parameterNodeWrapper
class AISegmentPortalParameterNode:
    """
    The parameters needed by module.

    inputVolume - The volume to segment.
    modelId - Catalog id of the model to run.
    device - Where to run the model: "auto" (the model's preferred device), "cpu", "cuda" or "mps".
    boxesOneStructure - The checked box prompts (Markups ROIs, for LiteMedSAM) outline one structure (their
        slices between filled) rather than one structure each: `aiportal segment --box-labels 1 1 ...`.
    outputSegmentation - Segmentation that receives the result; None creates a new one.
    showIn3D - Show the result as surfaces in the 3D views.
    runOnServer - Run the model on the inference server at serverURL instead of this computer.
    serverURL - Base URL of the inference server (`aiportal serve`). Its API key is never saved in the scene.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelId: str = DEFAULT_MODEL_ID
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    boxesOneStructure: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    showIn3D: bool = True
    runOnServer: bool = False
    serverURL: str = ""


#
# SegmentationJobPoller
#


class SegmentationJobPoller(JobFollower):
    """Follows a running segmentation job from the main thread and finishes it there.

    The job computes in a child process watched by a worker thread; MRML may only be changed from the
    main thread, so a timer polls the job and calls ``finish()`` (which fills the segmentation node)
    once it is done — only if the scene it was started for is still open (closing it cancels the job).
    """

    def __init__(
        self,
        job: "SegmentationJob | RemoteSegmentationJob",
        onProgress: Callable[[float, str], None],
        onDone: Callable[["SegmentationResult | None", str | None], None],
    ) -> None:
        """onDone(result, error): result on success, error text on failure, both None when cancelled."""
        super().__init__(job, desktop_jobs(slicer.mrmlScene), onProgress, onDone)
        self.drive(qt.QTimer(), POLL_INTERVAL_MS)

    def stop(self) -> None:
        """Cancel the job; its result is never applied."""
        self.cancel()


def followJob(job, onProgress: Callable[[float, str], None], onDone: Callable, finish=None) -> JobFollower:
    """Start a background job and follow it from a timer (export, server check)."""
    job.start()
    return follow(job, slicer.mrmlScene, qt.QTimer(), onProgress, onDone, finish, POLL_INTERVAL_MS)


#
# AISegmentPortalWidget
#


class AISegmentPortalWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._poller = None
        self._weightsFollower = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AISegmentPortal.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. Make sure that in Qt designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal in is connected to each MRML widget's.
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AISegmentPortalLogic()

        # The model picker shows titles but the parameter node stores catalog ids, so it is filled
        # here rather than bound through SlicerParameterName (whose combo box shows the raw values).
        self._fillModelComboBox("")

        # Connections

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelSearchBox.connect("textChanged(QString)", self._fillModelComboBox)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.installWeightsButton.connect("clicked(bool)", self.onInstallWeights)
        self.serverPanel = ServerPanel(self.ui, self.logic, lambda: self._parameterNode, followJob)  # Server section
        self.exportPanel = ExportPanel(self.ui, self.logic, lambda: self._parameterNode, followJob,
                                       self._onJobProgress)  # the Export section: AISegmentPortalLib/export_panel.py
        self.reviewPanel = ReviewPanel(  # accept / mark as edited / reject each AI segment: AISegmentPortalLib
            self.ui, lambda: self._parameterNode.outputSegmentation if self._parameterNode else None)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        for follower in (self._poller, self._weightsFollower):
            if follower is not None:
                follower.cancel()
        self.exportPanel.cancel()
        self.serverPanel.cancel()
        self.reviewPanel.cleanup()
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # The job's nodes are about to disappear
        if self._poller is not None and self._poller.running:
            self._poller.stop()
            self._updateRunState()
        # Parameter node will be reset, do not use it anymore
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
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: AISegmentPortalParameterNode | None) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode:
            comboBox = self.ui.modelComboBox
            index = comboBox.findData(self._parameterNode.modelId)
            if index < 0 and comboBox.currentIndex >= 0:
                # A model this installation does not have (e.g. a scene saved elsewhere): use the shown one
                self._parameterNode.modelId = comboBox.itemData(comboBox.currentIndex)
            elif index != comboBox.currentIndex:
                comboBox.currentIndex = index
            comboBox.toolTip = comboBox.itemData(comboBox.currentIndex, qt.Qt.ToolTipRole) or ""
            self.reviewPanel.refresh()  # the output segmentation may have changed
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._poller is not None and self._poller.running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running segmentation")
            self.ui.applyButton.enabled = True
        elif self._parameterNode and self._parameterNode.inputVolume and self.ui.modelComboBox.currentIndex >= 0:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = _("Run the selected model on the input volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = _("Select an input volume and a model")
            self.ui.applyButton.enabled = False

    def _fillModelComboBox(self, searchText: str) -> None:
        """List the catalog models whose title, id, modality or task contain the search text."""
        currentId = self._parameterNode.modelId if self._parameterNode else DEFAULT_MODEL_ID
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in matchingModels(get_catalog().models, searchText):
            combo.addItem(entry.title, entry.id)
            combo.setItemData(combo.count - 1, modelToolTip(entry), qt.Qt.ToolTipRole)
        combo.setCurrentIndex(max(combo.findData(currentId), 0))
        combo.blockSignals(wasBlocked)
        self.onModelChanged(combo.currentIndex)

    def onModelChanged(self, index: int) -> None:
        """Store the picked model's id; the box prompt is offered only to models that take one."""
        modelId = self.ui.modelComboBox.itemData(index) if index >= 0 else None
        if self._parameterNode and modelId and self._parameterNode.modelId != modelId:
            self._parameterNode.modelId = modelId
        takesBox = bool(modelId) and "box" in get_catalog().get(modelId).prompts
        self.ui.promptROILabel.visible = self.ui.promptROISelector.visible = takesBox
        self.ui.boxesOneStructureCheckBox.visible = takesBox
        self._updateInstallButton(modelId)

    def _updateInstallButton(self, modelId: str | None) -> None:
        """Offered for models whose weights aiportal can download (aiportal.weights); greyed once installed."""
        offer = weights_offer(modelId) if modelId else None
        button = self.ui.installWeightsButton
        button.visible = bool(offer and offer.installable)
        installing = self._weightsFollower is not None and self._weightsFollower.running
        button.enabled = bool(offer and not offer.installed and not installing)
        button.text = _("Weights installed") if offer and offer.installed else _("Install weights")
        button.toolTip = offer.tooltip if offer else ""

    def onInstallWeights(self) -> None:
        """Ask once (licence, size, source), then download, check and install in the background."""
        modelId = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex)
        offer = weights_offer(modelId)
        if not offer.installable or not slicer.util.confirmYesNoDisplay(offer.question):
            return
        self.ui.installWeightsButton.enabled = False
        self._weightsFollower = followJob(FunctionJob(install_function(modelId), _("installing weights")),
                                          self._onJobProgress, self._onWeightsInstalled)

    def _onWeightsInstalled(self, summary: str | None, error: str | None) -> None:
        self._updateInstallButton(self._parameterNode.modelId if self._parameterNode else None)
        if error is not None:
            self.ui.statusLabel.text = _("Weights not installed.")
            slicer.util.errorDisplay(_("Installing the weights failed.") + "\n\n" + error)
        else:
            self.ui.statusLabel.text = summary or _("Cancelled: nothing was installed.")

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button, or cancel the running one."""
        if self._poller is not None and self._poller.running:
            self._poller.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self.ui.resultsTable.setRowCount(0)
            server = None
            if self._parameterNode.runOnServer:
                server = self.serverPanel.client()
                if not self.serverPanel.askConsent(server.base_url):
                    return
            job = self.logic.startJob(
                self._parameterNode.inputVolume,
                self._parameterNode.modelId,
                self._parameterNode.device,
                self._parameterNode.outputSegmentation,
                list(self.ui.promptROISelector.checkedNodes()),
                self._parameterNode.boxesOneStructure,
                server,
            )
            self._poller = SegmentationJobPoller(job, self._onJobProgress, self._onJobDone)
        self._updateRunState()

    def _onJobProgress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = stage

    def _onJobDone(self, result: "SegmentationResult | None", error: str | None) -> None:
        self._updateRunState()
        if error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Segmentation failed.") + "\n\n" + error)
            return
        if result is None:
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.value = 0
            return
        self.ui.statusLabel.text = "\n".join([_("Done."), *result.notes])
        if self._parameterNode:
            # Later runs refill the same segmentation unless the user picks another one
            self._parameterNode.outputSegmentation = result.segmentation_node
            if self._parameterNode.showIn3D:
                show_segmentation_3d(result.segmentation_node, True)
        self._showResult(result)
        self.reviewPanel.showResult(result, self._parameterNode.inputVolume.GetName()
                                    if self._parameterNode and self._parameterNode.inputVolume else "")

    def _showResult(self, result: "SegmentationResult") -> None:
        """Fill the results table: each segment's model confidence, then the provenance of the run."""
        rows = [(_("segment: {name}").format(name=segment["name"]),
                 _("confidence {value:.2f}").format(value=segment["confidence"])
                 if segment["confidence"] is not None else _("no confidence given by the model"))
                for segment in describe_segments(result.segmentation_node)]
        rows += [(key, str(value)) for key, value in dataclasses.asdict(result.provenance).items()]
        rows.append(("elapsed_s", f"{result.elapsed_s:.1f}"))
        if result.absent_labels:
            rows.append(("absent_labels", ", ".join(result.absent_labels)))
        table = self.ui.resultsTable
        table.setRowCount(len(rows))
        for row, (key, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(key))
            table.setItem(row, 1, qt.QTableWidgetItem(value))
        table.resizeColumnToContents(0)
        self.ui.resultsCollapsibleButton.collapsed = False

    def _updateRunState(self) -> None:
        running = self._poller is not None and self._poller.running
        # Inputs stay as they were for the whole run
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.outputsCollapsibleButton.enabled = not running
        self._checkCanApply()


def matchingModels(models: list, searchText: str) -> list:
    """Models whose id, title, modality or task contain every word of the search text."""
    words = searchText.lower().split()
    return [entry for entry in models
            if all(word in f"{entry.id} {entry.title} {entry.modality} {entry.task}".lower() for word in words)]


def modelToolTip(entry) -> str:
    """What a catalog model does and what it does not do, for its tooltip."""
    return _("{description}\n\nLimitations: {limitations}\n\nModality: {modality}, version {version}").format(
        description=entry.description,
        limitations=entry.limitations,
        modality=entry.modality,
        version=entry.version,
    )


#
# "AI Segment" button in the 3D view controller bars (AISegmentPortalLib/view_buttons.py)
#


def _startViewButtonJob(volumeNode, onProgress: Callable, onDone: Callable) -> "SegmentationJobPoller":
    return SegmentationJobPoller(AISegmentPortalLogic().startJob(volumeNode, DEFAULT_MODEL_ID), onProgress, onDone)


_threeDViewSegmentButtons = ThreeDViewSegmentButtons(_startViewButtonJob, DEFAULT_MODEL_ID)


def installThreeDViewButtons() -> None:
    """Add the "AI Segment" button to the 3D views (called once the application has started)."""
    _threeDViewSegmentButtons.install()


#
# AISegmentPortalLogic
#


class AISegmentPortalLogic(ScriptedLoadableModuleLogic):
    """Thin facade over :mod:`aiportal.segment`, which does all the work.

    Can be used without GUI widget. Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AISegmentPortalParameterNode(super().getParameterNode())

    def ensureDependencies(self, feature: str = "segment") -> None:
        """Install the Python packages ``feature`` needs that Slicer lacks (asks the user once)."""
        ensurePythonRequirements(feature)

    def createJob(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        modelId: str,
        device: str,
        outputSegmentation: vtkMRMLSegmentationNode | None,
        promptROIs: list[vtkMRMLMarkupsROINode] | None = None,
        boxesOneStructure: bool = False,
        server: "ServerClient | None" = None,
    ) -> "SegmentationJob | RemoteSegmentationJob":
        """A job for inputVolume (on the server when one is given), once the Python packages are installed."""
        if not inputVolume:
            raise ValueError(_("Select an input volume."))
        self.ensureDependencies("remote" if server is not None else "segment")
        params = {}
        if "box" in get_catalog().get(modelId).prompts:  # what --box ... --box-labels gives the CLI's model
            params = boxes_from_roi_nodes(inputVolume, promptROIs or [], boxesOneStructure)
        if server is not None:  # the user confirmed that the image may leave this computer
            return RemoteSegmentationJob(inputVolume, modelId, server, consent=True, params=params)
        # the model runs in a child process with its own Python environment (aiportal.models.envs)
        return SegmentationJob(inputVolume, modelId, params=params, device=device,
                               segmentation_node=outputSegmentation)

    def serverClient(self, serverURL: str, apiKey: str) -> "ServerClient":
        """A client of the inference server (every face uses the same one)."""
        from aiportal.server.client import ServerClient

        if not serverURL:
            raise ValueError(_("Enter the server address, e.g. https://ai-server.hospital.org"))
        return ServerClient(serverURL, api_key=apiKey or None)

    def startJob(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        modelId: str = DEFAULT_MODEL_ID,
        device: str = "auto",
        outputSegmentation: vtkMRMLSegmentationNode | None = None,
        promptROIs: list[vtkMRMLMarkupsROINode] | None = None,
        boxesOneStructure: bool = False,
        server: "ServerClient | None" = None,
    ) -> "SegmentationJob | RemoteSegmentationJob":
        """
        Start segmenting in a child process (watched by a worker thread), or on the server, and return the job.
        Can be used without GUI widget: poll the job with ``job.poll()`` and call ``job.finish()``
        from the main thread once its state is "done" (see :class:`SegmentationJobPoller`).
        :param inputVolume: volume to segment
        :param modelId: catalog id of the model
        :param device: "auto", "cpu", "cuda" or "mps"
        :param outputSegmentation: segmentation to fill; None creates a new one
        :param promptROIs: box prompts for models that take them (LiteMedSAM), one structure each
        :param boxesOneStructure: the boxes outline one structure (the slices between them filled)
        :param server: run on this inference server (the caller has the user's consent to upload)
        """
        job = self.createJob(inputVolume, modelId, device, outputSegmentation, promptROIs, boxesOneStructure,
                             server)
        job.start()
        return job

    def sourceFiles(self, volumeNode: vtkMRMLScalarVolumeNode) -> list[str]:
        """The DICOM files of a volume loaded by Slicer's DICOM module (none for a file-based volume)."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]

    def createExportJob(
        self,
        segmentationNode: vtkMRMLSegmentationNode,
        volumeNode: vtkMRMLScalarVolumeNode,
        outputFolder: str,
        options: ExportOptions,
    ) -> ExportJob:
        """
        A job that exports the segmentation (seg.nrrd, statistics, DICOM SEG + SR + key images + 3D models, STL/OBJ)
        and audits the export.
        The nodes are copied now (main thread); the job writes from the copies in a worker thread.
        Nothing in outputFolder is overwritten.
        :param segmentationNode: segmentation made on volumeNode
        :param volumeNode: its source volume; DICOM SEG/SR need it loaded from DICOM
        :param outputFolder: folder to write into (created if missing)
        :param options: formats and their settings
        """
        self.ensureDependencies("export")
        if DICOM_FORMATS & set(options.formats):
            self.ensureDependencies("dicom-export")
        return ExportJob(segmentationNode, volumeNode, self.sourceFiles(volumeNode), outputFolder, options)

    def exportResults(
        self,
        segmentationNode: vtkMRMLSegmentationNode,
        volumeNode: vtkMRMLScalarVolumeNode,
        outputFolder: str,
        options: ExportOptions,
    ) -> ExportResult:
        """The same export as :meth:`createExportJob`, waiting for it. Can be used without GUI widget."""
        return self.createExportJob(segmentationNode, volumeNode, outputFolder, options).run()

    def process(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        modelId: str = DEFAULT_MODEL_ID,
        device: str = "auto",
        outputSegmentation: vtkMRMLSegmentationNode | None = None,
        progressCallback: Callable[[float, str], None] | None = None,
    ) -> "SegmentationResult":
        """
        Segment inputVolume and wait for the result.
        Can be used without GUI widget.
        :param inputVolume: volume to segment
        :param modelId: catalog id of the model
        :param device: "auto", "cpu", "cuda" or "mps"
        :param outputSegmentation: segmentation to fill; None creates a new one
        :param progressCallback: called with (fraction 0..1, stage text) while it runs
        :return: the result, with its segmentation node, model entry and provenance
        """
        job = self.createJob(inputVolume, modelId, device, outputSegmentation)
        return job.run(progress=progressCallback) if progressCallback else job.run()


#
# AISegmentPortalTest
#


class AISegmentPortalTest(ScriptedLoadableModuleTest):
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
        self.test_AISegmentPortal1()
        self.setUp()
        self.test_AISegmentPortalSceneClose()
        self.setUp()
        self.test_AISegmentPortalViewButtons()
        self.setUp()
        self.test_AISegmentPortalBoxPrompts()

    def test_AISegmentPortal1(self):
        """Segment the project's CT phantom with classic-ct and export it (as Testing/test_desktop_jobs.py does)."""
        import tempfile

        from aiportal.io.volumes import volume_node_from_array
        from aiportal.sample import make_ct_phantom

        self.delayDisplay("Starting the test")
        phantom = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.5, 3.5))
        inputVolume = volume_node_from_array(slicer.mrmlScene, phantom.hu, phantom.ijk_to_ras, "phantom")
        inputVolume.SetAttribute("DICOM.Modality", "CT")

        stages = []
        logic = AISegmentPortalLogic()
        result = logic.process(
            inputVolume, DEFAULT_MODEL_ID, device="cpu", progressCallback=lambda f, s: stages.append((f, s))
        )
        self.assertTrue(stages, "no progress was reported")

        segmentationNode = result.segmentation_node
        segmentation = segmentationNode.GetSegmentation()
        for label in get_catalog().get(DEFAULT_MODEL_ID).labels:
            segmentId = segmentation.GetSegmentIdBySegmentName(label.name)
            self.assertTrue(segmentId, f"no segment named {label.name!r}")
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, inputVolume)
            self.assertGreater(int(voxels.sum()), 0, f"segment {label.name!r} is empty")
        self.assertEqual(result.absent_labels, [])
        self.assertEqual(result.model.id, DEFAULT_MODEL_ID)
        self.assertEqual(result.provenance.model_id, DEFAULT_MODEL_ID)

        from aiportal.audit import AuditLog

        with tempfile.TemporaryDirectory() as folder:  # review decisions, audited with the AI draft's Dice
            previousDrafts = os.environ.get("AIPORTAL_DRAFTS_DIR")
            os.environ["AIPORTAL_DRAFTS_DIR"] = os.path.join(folder, "drafts")
            try:
                reviewSelfTest(self, result, AuditLog(os.path.join(folder, "audit.jsonl")))
            finally:
                os.environ.pop("AIPORTAL_DRAFTS_DIR")
                if previousDrafts is not None:
                    os.environ["AIPORTAL_DRAFTS_DIR"] = previousDrafts

        with tempfile.TemporaryDirectory() as folder:
            exported = logic.exportResults(segmentationNode, inputVolume, folder,
                                           ExportOptions(formats=("nrrd", "json", "stl")))
            names = {file.name for file in exported.files}
            self.assertIn("segmentation.seg.nrrd", names)
            self.assertTrue(any(name.endswith(".stl") for name in names))
            for file in exported.files:
                self.assertTrue(os.path.exists(os.path.join(folder, file.name)), file.name)

        self.delayDisplay("Test passed")

    def test_AISegmentPortalSceneClose(self):
        """Closing the scene cancels a running segmentation, and its result lands nowhere."""
        from aiportal.io.volumes import volume_node_from_array
        from aiportal.sample import make_ct_phantom

        phantom = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.5, 3.5))
        inputVolume = volume_node_from_array(slicer.mrmlScene, phantom.hu, phantom.ijk_to_ras, "phantom")
        outcome = []
        poller = SegmentationJobPoller(AISegmentPortalLogic().startJob(inputVolume, DEFAULT_MODEL_ID, "cpu"),
                                       lambda fraction, stage: None, lambda result, error: outcome.append(result))
        slicer.mrmlScene.Clear(0)
        while poller.running:
            slicer.app.processEvents()
        self.assertEqual(outcome, [None])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.delayDisplay("Test passed")

    def test_AISegmentPortalViewButtons(self):
        """Every 3D view gets exactly one "AI Segment" button (only with a main window)."""
        if slicer.app.layoutManager() is None:
            self.delayDisplay("No main window: view buttons not tested")
            return
        installThreeDViewButtons()
        installThreeDViewButtons()  # idempotent
        layoutManager = slicer.app.layoutManager()
        for index in range(layoutManager.threeDViewCount):
            barWidget = layoutManager.threeDWidget(index).threeDController().barWidget()
            self.assertEqual(len(slicer.util.findChildren(widget=barWidget, name=VIEW_BUTTON_OBJECT_NAME)), 1)
        self.delayDisplay("Test passed")

    def test_AISegmentPortalBoxPrompts(self):
        """Several ROIs give the box model what `--box ... --box ... [--box-labels 1 1]` gives it on the CLI."""
        from aiportal.errors import InputError
        from aiportal.io.volumes import volume_node_from_array
        from aiportal.sample import make_ct_phantom

        phantom = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.5, 3.5))
        inputVolume = volume_node_from_array(slicer.mrmlScene, phantom.hu, phantom.ijk_to_ras, "phantom")
        rois = []
        for k in (10, 30):  # flat boxes on two slices: voxel centres (i, j, k) -> RAS through the volume's matrix
            corners = [phantom.ijk_to_ras @ [i, j, k, 1.0] for i, j in ((20, 30), (60, 70))]
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
            roi.SetXYZ(*((corners[0][:3] + corners[1][:3]) / 2))
            roi.SetRadiusXYZ(*(abs(corners[1][:3] - corners[0][:3]) / 2))
            rois.append(roi)
        logic = AISegmentPortalLogic()
        for oneStructure, labels in ((True, [1, 1]), (False, [1, 2])):
            job = logic.createJob(inputVolume, "litemedsam", "cpu", None, rois, oneStructure)
            self.assertEqual(job.params, {"boxes": [[20, 30, 10, 60, 70, 10], [20, 30, 30, 60, 70, 30]],
                                          "box_labels": labels})
        with self.assertRaises(InputError):
            logic.createJob(inputVolume, "litemedsam", "cpu", None, [], False)
        self.delayDisplay("Test passed")
