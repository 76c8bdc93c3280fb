"""The one place that knows how to get a Slicer scene with its module logics.

Inside 3D Slicer this returns Slicer's own scene and logics. Anywhere else (CLI, tests, server,
browser workspace) it builds the same thing on the ``slicer-core`` wheel, registering the module
logics the way Slicer's application does, so that logic code cannot tell the difference::

    from aiportal.runtime import get_runtime
    rt = get_runtime()              # Slicer's scene inside Slicer, a headless one elsewhere
    node = rt.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")

Pitfalls handled here (see the slicer-core field report):
- segmentation converter rules exist only after the segmentations logic gets a scene;
- the terminologies logic loads its standard SNOMED contexts when it gets a scene, from its
  module share directory, which slicer-core does not ship (trame-slicer does);
- the volumes logic needs the colors logic registered first.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import slicer

#: Context names of the standard terminologies, as Slicer names them.
GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_REGION_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass
class SlicerRuntime:
    """A MRML scene and the module logics that act on it."""

    scene: slicer.vtkMRMLScene
    app_logic: slicer.vtkSlicerApplicationLogic
    colors: slicer.vtkSlicerColorLogic
    volumes: slicer.vtkSlicerVolumesLogic
    segmentations: slicer.vtkSlicerSegmentationsModuleLogic
    terminologies: slicer.vtkSlicerTerminologiesModuleLogic
    markups: slicer.vtkSlicerMarkupsLogic
    transforms: slicer.vtkSlicerTransformLogic
    subject_hierarchy: slicer.vtkSlicerSubjectHierarchyModuleLogic
    inside_slicer: bool = False

    @property
    def shnode(self) -> slicer.vtkMRMLSubjectHierarchyNode:
        """The scene's subject hierarchy (created on first use)."""
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)


def in_slicer_application() -> bool:
    """True when running inside the 3D Slicer application (not on the bare slicer-core wheel)."""
    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


def terminology_share_directory() -> Path | None:
    """Folder holding Slicer's standard terminology JSON files, outside the Slicer application.

    slicer-core ships none; trame-slicer ships the three standard SNOMED-coded contexts. Found
    without importing trame-slicer (its import starts a web stack). ``AIPORTAL_TERMINOLOGY_DIR``
    overrides it, e.g. to use a Slicer installation's own files under PythonSlicer.
    """
    if override := os.environ.get("AIPORTAL_TERMINOLOGY_DIR"):
        return Path(override) if Path(override).is_dir() else None
    spec = importlib.util.find_spec("trame_slicer")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources" / "terminologies"
    return folder if folder.is_dir() else None


def build_headless_runtime() -> SlicerRuntime:
    """A fresh scene with the module logics Slicer registers at start-up (~0.05 s)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)

    def register(logic, name: str, share_dir: Path | None = None):
        if share_dir is not None:
            logic.SetModuleShareDirectory(str(share_dir))
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    colors = register(app_logic.GetColorLogic(), "Colors")  # the volumes logic needs it first
    colors.AddDefaultColorNodes()
    share = terminology_share_directory()
    if share is None:
        raise RuntimeError(
            "Slicer's standard terminology files were not found — install the project with "
            "`pip install -e .` (it brings them with trame-slicer), or set AIPORTAL_TERMINOLOGY_DIR "
            "to a folder holding Slicer's *.term.json files"
        )
    return SlicerRuntime(
        scene=scene,
        app_logic=app_logic,
        colors=colors,
        volumes=register(slicer.vtkSlicerVolumesLogic(), "Volumes"),
        segmentations=register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations"),
        terminologies=register(slicer.vtkSlicerTerminologiesModuleLogic(), "Terminologies", share),
        markups=register(slicer.vtkSlicerMarkupsLogic(), "Markups"),
        transforms=register(slicer.vtkSlicerTransformLogic(), "Transforms"),
        subject_hierarchy=register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy"),
    )


def _slicer_application_runtime() -> SlicerRuntime:
    modules = slicer.modules
    return SlicerRuntime(
        scene=slicer.mrmlScene,
        app_logic=slicer.app.applicationLogic(),
        colors=modules.colors.logic(),
        volumes=modules.volumes.logic(),
        segmentations=modules.segmentations.logic(),
        terminologies=modules.terminologies.logic(),
        markups=modules.markups.logic(),
        transforms=modules.transforms.logic(),
        subject_hierarchy=modules.subjecthierarchy.logic(),
        inside_slicer=True,
    )


_lock = threading.Lock()
_runtime: SlicerRuntime | None = None


def get_runtime() -> SlicerRuntime:
    """Slicer's own scene and logics inside Slicer; otherwise one shared headless runtime."""
    global _runtime
    if in_slicer_application():
        return _slicer_application_runtime()
    with _lock:
        if _runtime is None:
            _runtime = build_headless_runtime()
        return _runtime


def private_scene_copies(*nodes):
    """Deep copies of ``nodes`` in a scene of their own, for a worker thread to read while the scene changes.

    MRML belongs to the main thread: a job copies its inputs here (on the main thread), computes on the
    copies in its worker thread, and applies the result to the original nodes back on the main thread.
    None stays None. The copies keep the originals' names and, for segmentations, the segment ids.
    """
    scene = slicer.vtkMRMLScene()
    copies = []
    for node in nodes:
        if node is None:
            copies.append(None)
            continue
        copy = scene.AddNewNodeByClass(node.GetClassName(), node.GetName())
        copy.CopyContent(node, True)  # deep: voxels, geometry, segments and their tags
        copies.append(copy)
    return (scene, *copies)
