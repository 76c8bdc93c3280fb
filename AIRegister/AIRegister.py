import logging
import os
import sys

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
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
        self.parent.contributors = ["AI Segment Portal contributors"]
        # _() function marks text as translatable to other languages
        self.parent.helpText = _("""
Register a prior study to the current one, review the fusion and carry segments across for
follow-up comparison. Work in progress.
See the <a href="https://github.com/ai-segment-portal/SlicerAIPortal#airegister">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Developed by the AI Segment Portal contributors, on 3D Slicer's scripted module template.
""")


#
# AIRegisterParameterNode
#


@parameterNodeWrapper
class AIRegisterParameterNode:
    """
    The parameters needed by module.

    fixedVolume - The reference image (usually the current study).
    movingVolume - The image moved onto the fixed one (usually the prior study).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode


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
        """Run processing when user clicks "Apply" button."""
        with slicer.util.tryWithErrorDisplay(_("Failed to register the volumes."), waitCursor=True):
            self.logic.process(self._parameterNode.fixedVolume, self._parameterNode.movingVolume)


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

    def process(self, fixedVolume: vtkMRMLScalarVolumeNode, movingVolume: vtkMRMLScalarVolumeNode) -> None:
        """
        Register movingVolume to fixedVolume.
        Can be used without GUI widget. Placeholder: the registration service is not written yet.
        :param fixedVolume: reference image
        :param movingVolume: image to move onto the reference
        """
        if not fixedVolume or not movingVolume:
            raise ValueError(_("Select a fixed and a moving volume."))
        logging.info("AIRegister: registering %s to %s", movingVolume.GetName(), fixedVolume.GetName())
        raise NotImplementedError(_("Registration is not available yet in this version."))


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
        """The logic and its parameter node construct; the placeholder refuses bad input clearly."""
        self.delayDisplay("Starting the test")

        logic = AIRegisterLogic()
        parameterNode = logic.getParameterNode()
        self.assertIsNone(parameterNode.fixedVolume)
        self.assertIsNone(parameterNode.movingVolume)
        with self.assertRaises(ValueError):
            logic.process(None, None)

        self.delayDisplay("Test passed")
