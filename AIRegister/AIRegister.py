import logging
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
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

from aiportal.desktop_jobs import desktop_jobs, follow
from aiportal.desktop_requirements import ensure_feature
from aiportal.register.job import RegistrationJob
from aiportal.runtime import get_runtime
from aiportal.segmentation import segment_mask

#: How often the main thread polls a running registration for progress.
POLL_INTERVAL_MS = 100

#
# AIRegister
#


class AIRegister(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AI Register")
        self.parent.categories = [_("AI Portal"), translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["AI Segment Portal maintainers (AI Segment Portal project)"]
        # _() function marks text as translatable to other languages
        self.parent.helpText = _("""
Register a prior study to the current one, review the fusion and carry segments across for
follow-up comparison.
See the <a href="https://github.com/ai-segment-portal/SlicerAIPortal#airegister">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the AI Segment Portal contributors, on 3D Slicer's scripted module template.
""")
        # No registration may outlive the application
        slicer.app.connect("aboutToQuit()", lambda: desktop_jobs(slicer.mrmlScene).application_quitting())


#
# AIRegisterParameterNode
#


@parameterNodeWrapper
class AIRegisterParameterNode:
    """
    The parameters needed by module.

    fixedVolume - The reference image (usually the current study).
    movingVolume - The image moved onto the fixed one (usually the prior study).
    registrationType - rigid, affine (after rigid) or bspline (deformable, after affine).
    fusionMode - How the slice views show the result: fade, difference or checkerboard.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    registrationType: Annotated[str, Choice(["rigid", "affine", "bspline"])] = "rigid"
    fusionMode: Annotated[str, Choice(["fade", "difference", "checkerboard"])] = "fade"


#
# AIRegisterWidget
#


class AIRegisterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._follower = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AIRegister.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. Make sure that in Qt designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal in is connected to each MRML widget's.
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AIRegisterLogic()

        # Connections

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._follower is not None:
            self._follower.cancel()  # its result is never applied
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
        # The running registration is cancelled (aiportal.desktop_jobs): its volumes are about to disappear
        if self._follower is not None:
            self._follower.cancel()
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
        if not self._parameterNode.fixedVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.fixedVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: AIRegisterParameterNode | None) -> None:
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
        parameterNode = self._parameterNode
        if (
            parameterNode
            and parameterNode.fixedVolume
            and parameterNode.movingVolume
            and parameterNode.fixedVolume != parameterNode.movingVolume
        ):
            self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select two different volumes: fixed and moving")
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        """Start the registration in the background, or cancel the running one."""
        if self._follower is not None and self._follower.running:
            self._follower.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to register the volumes."), waitCursor=True):
            fusionMode = self._parameterNode.fusionMode  # read now: the parameter node may be gone when it ends
            job = self.logic.startJob(
                self._parameterNode.fixedVolume, self._parameterNode.movingVolume,
                self._parameterNode.registrationType,
                fixedMask=(self.ui.fixedMaskSelector.currentNode(), self.ui.fixedMaskSelector.currentSegmentID()),
                movingMask=(self.ui.movingMaskSelector.currentNode(), self.ui.movingMaskSelector.currentSegmentID()))
            self._follower = follow(job, slicer.mrmlScene, qt.QTimer(), self._onProgress, self._onDone,
                                    finish=lambda done: done.finish(get_runtime(), fusion_mode=fusionMode)[1],
                                    interval_ms=POLL_INTERVAL_MS)
            self.ui.applyButton.text = _("Cancel")
            self.ui.inputsCollapsibleButton.enabled = False

    def _onProgress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = stage

    def _onDone(self, result, error: str | None) -> None:
        """The registration ended: result (applied to the scene it was started for), error, or neither."""
        self.ui.applyButton.text = _("Apply")
        self.ui.inputsCollapsibleButton.enabled = True
        if error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Failed to register the volumes.") + "\n\n" + error)
        elif result is None:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
            self.ui.progressBar.value = 0
        else:
            done = _("Done ({method}): metric {metric:.4g} after {iterations} iterations in {seconds:.1f} s.")
            text = done.format(method=result.metric, metric=result.final_metric, iterations=result.iterations,
                               seconds=result.elapsed_s)
            if result.warnings:  # a result its own check does not trust must not look like a success
                text = _("WARNING: ") + " ".join(result.warnings) + "\n" + text
                self.ui.statusLabel.setStyleSheet("color: #c62828; font-weight: bold;")
            else:
                self.ui.statusLabel.setStyleSheet("")
            self.ui.statusLabel.text = text
            self.ui.statusLabel.toolTip = result.metric_choice.reason if result.metric_choice else ""


#
# AIRegisterLogic
#


class AIRegisterLogic(ScriptedLoadableModuleLogic):
    """Thin facade over the GUI-free registration code in :mod:`aiportal`.

    Can be used without GUI widget. Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AIRegisterParameterNode(super().getParameterNode())

    def startJob(self, fixedVolume: vtkMRMLScalarVolumeNode, movingVolume: vtkMRMLScalarVolumeNode,
                 registrationType: str = "rigid", fixedMask=(None, None), movingMask=(None, None)) -> RegistrationJob:
        """
        Start registering in a worker thread and return the job (poll it; call ``finish`` on the main thread).
        Can be used without GUI widget.
        :param fixedMask: optional (segmentation node, segment id) on the fixed volume: the metric samples inside it
        :param movingMask: the same on the moving volume
        """
        if not fixedVolume or not movingVolume:
            raise ValueError(_("Select a fixed and a moving volume."))
        ensure_feature("register", slicer, requester=_("AI Register"))
        masks = {}
        for key, (segmentationNode, segmentId), volume in (("fixed_mask", fixedMask, fixedVolume),
                                                          ("moving_mask", movingMask, movingVolume)):
            if segmentationNode and segmentId:  # read here, on the main thread, before the worker starts
                masks[key] = segment_mask(segmentationNode, segmentId, volume)
        job = RegistrationJob(fixedVolume, movingVolume, kind=registrationType, **masks)  # copies the volumes
        job.start()
        return job

    def process(
        self,
        fixedVolume: vtkMRMLScalarVolumeNode,
        movingVolume: vtkMRMLScalarVolumeNode,
        registrationType: str = "rigid",
        fusionMode: str = "fade",
        progressCallback=None,
    ):
        """
        Register movingVolume to fixedVolume, put movingVolume under the resulting transform node
        and set the slice views to review the result.
        Can be used without GUI widget.
        :param fixedVolume: reference image
        :param movingVolume: image to move onto the reference
        :param registrationType: "rigid", "affine" or "bspline"
        :param fusionMode: "fade", "difference" or "checkerboard"
        :param progressCallback: called with (fraction 0..1, stage text)
        :return: the transform node (moving to fixed)
        """
        if not fixedVolume or not movingVolume:
            raise ValueError(_("Select a fixed and a moving volume."))
        logging.info("AIRegister: %s registration of %s to %s", registrationType, movingVolume.GetName(),
                     fixedVolume.GetName())
        ensure_feature("register", slicer, requester=_("AI Register"))
        # the same job the panel runs, waited for here
        job = RegistrationJob(fixedVolume, movingVolume, kind=registrationType)
        transformNode, _result = job.run(progressCallback or (lambda fraction, stage: None),
                                         runtime=get_runtime(), fusion_mode=fusionMode)
        return transformNode


#
# AIRegisterTest
#


class AIRegisterTest(ScriptedLoadableModuleTest):
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
        self.test_AIRegister1()

    def test_AIRegister1(self):
        """The project's CT phantom moved by a known shift is registered back (as Testing/test_desktop_jobs.py does)."""
        self.delayDisplay("Starting the test")

        import numpy as np

        from aiportal.io.volumes import ijk_to_ras_matrix, volume_node_from_array
        from aiportal.sample import make_ct_phantom

        logic = AIRegisterLogic()
        parameterNode = logic.getParameterNode()
        self.assertEqual(parameterNode.registrationType, "rigid")
        with self.assertRaises(ValueError):
            logic.process(None, None)

        phantom = make_ct_phantom(shape=(24, 64, 64), spacing=(8.0, 5.0, 5.0))
        fixed = volume_node_from_array(slicer.mrmlScene, phantom.hu, phantom.ijk_to_ras, "phantom")
        motion = np.eye(4)
        motion[:3, 3] = (6.0, -4.0, 0.0)  # a known shift in the moving volume's header
        moving = volume_node_from_array(slicer.mrmlScene, phantom.hu, motion @ ijk_to_ras_matrix(fixed), "moved")
        transformNode = logic.process(fixed, moving, "rigid", "fade")
        recovered = slicer.util.arrayFromTransformMatrix(transformNode)
        self.assertLess(np.abs(recovered @ motion - np.eye(4))[:3, 3].max(), 1.0)  # moving -> fixed undoes it
        self.assertEqual(moving.GetTransformNodeID(), transformNode.GetID())

        self.delayDisplay("Test passed")
