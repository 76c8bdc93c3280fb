"""Volumes in the Slicer scene: load any supported input, numpy round trips, save.

``load_volume`` is the one entry point for "give me this image as a volume node": a DICOM
folder or file goes through :mod:`aiportal.io.dicom_series`; NIfTI, NRRD and MetaImage go
through Slicer's own archetype reader so that IJK→RAS is exactly the one Slicer computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import vtk
from pydicom.multival import MultiValue
from vtkmodules.util import numpy_support

from aiportal.errors import AIPortalError, InputError
from aiportal.io.completeness import check_nifti_complete
from aiportal.io.dicom_series import SourceSeries, read_dicom_series
from aiportal.io.geometry import Geometry
from aiportal.io.hierarchy import place_in_study
from aiportal.progress import CancelToken, ProgressCallback, no_progress

if TYPE_CHECKING:
    import slicer

    from aiportal.runtime import SlicerRuntime

#: File name endings Slicer's archetype storage node reads and writes as scalar volumes.
VOLUME_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# vtkSlicerVolumesLogic.AddArchetypeVolume loading options (bit-coded).
_SINGLE_FILE = 4  # never pick up similarly numbered neighbours as a series
_AUTO_WINDOW_LEVEL = 8


@dataclass
class LoadedVolume:
    """A volume node in the scene, with the DICOM series it came from (if any)."""

    node: slicer.vtkMRMLScalarVolumeNode
    source: SourceSeries | None
    warnings: list[str]
    path: Path
    # DICOM: which grid the voxels are on ("regular" when a tilted or unevenly spaced series was
    # resampled, "acquired"), the acquired slices, tilt and gaps; see aiportal.io.geometry
    geometry: dict = field(default_factory=dict)

    @property
    def measurable(self) -> bool:
        """False for unevenly spaced slices kept as acquired: volumes and statistics would be wrong."""
        return self.geometry.get("measurable", True)


def volume_file_suffix(path: Path) -> str | None:
    """The volume file suffix ``path`` ends with (case-insensitive), or None."""
    name = path.name.lower()
    return next((suffix for suffix in VOLUME_FILE_SUFFIXES if name.endswith(suffix)), None)


def _file_stem(path: Path) -> str:
    suffix = volume_file_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


@contextmanager
def _vtk_messages() -> Iterator[vtk.vtkStringOutputWindow]:
    """Collect VTK/ITK errors instead of printing them, to put them into our own error.

    Swaps process-wide VTK state (output window, logger verbosity) for the duration: call it
    around one reader or writer call only.
    """
    previous_window = vtk.vtkOutputWindow.GetInstance()
    previous_verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    collector = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(collector)
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        yield collector
    finally:
        vtk.vtkLogger.SetStderrVerbosity(previous_verbosity)
        vtk.vtkOutputWindow.SetInstance(previous_window)


def _first_vtk_error(collector: vtk.vtkStringOutputWindow) -> str:
    """The first message VTK reported, without its source-file and object-address prefix."""
    lines = [line.strip() for line in collector.GetOutput().splitlines()]
    messages = [line for line in lines if line and not line.startswith(("ERROR: In", "Warning: In"))]
    if not messages:
        return "no details from the reader"
    text = messages[0].split("): ", 1)[-1]
    return text if len(text) <= 300 else text[:297] + "..."


def volume_node_from_array(
    scene: slicer.vtkMRMLScene,
    array_kji: np.ndarray,
    ijk_to_ras: np.ndarray,
    name: str,
    node_class: str = "vtkMRMLScalarVolumeNode",
) -> slicer.vtkMRMLScalarVolumeNode:
    """A new volume node holding a copy of ``array_kji`` (slice, row, column) at ``ijk_to_ras``."""
    array = np.asarray(array_kji)
    if array.ndim != 3:
        raise ValueError(f"volume array must be 3D (k, j, i), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(array.shape)[:] = array
    node = scene.AddNewNodeByClass(node_class, name)
    node.SetAndObserveImageData(image)  # geometry lives in the node, so image origin/spacing stay 0/1
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def array_from_volume(node) -> np.ndarray:
    """A copy of the node's voxels in (k, j, i) order."""
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"volume node {node.GetName()} has no image data")
    i, j, k = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    shape = (k, j, i) if components == 1 else (k, j, i, components)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()


def ijk_to_ras_matrix(node) -> np.ndarray:
    """The node's 4x4 IJK→RAS matrix (float64)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    values = np.asarray(array, dtype=float)
    if values.shape != (4, 4):
        raise ValueError(f"IJK→RAS must be a 4x4 matrix, got shape {values.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, values[r, c])
    return matrix


def nearest_on_grid(array_kji: np.ndarray, ijk_to_ras: np.ndarray, shape: tuple[int, ...],
                    target_ijk_to_ras: np.ndarray, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """``array_kji`` (on ``ijk_to_ras``) sampled nearest-neighbour at every voxel of another grid.

    Maps by geometry, never by array order (label maps are often stored flipped). Returns the values
    on the target grid (``fill`` where the source does not reach) and a mask of where it does.
    """
    k, j, i = np.indices(shape).reshape(3, -1)
    source = np.rint(np.linalg.inv(ijk_to_ras) @ target_ijk_to_ras @ np.vstack([i, j, k, np.ones_like(i)]))
    si, sj, sk = source[:3].astype(np.int64)
    inside = (si >= 0) & (sj >= 0) & (sk >= 0) & (sk < array_kji.shape[0]) & (sj < array_kji.shape[1]) & (
        si < array_kji.shape[2])
    values = np.full(k.size, fill, dtype=array_kji.dtype)
    values[inside] = array_kji[sk[inside], sj[inside], si[inside]]
    return values.reshape(shape), inside.reshape(shape)


def save_volume(node, path) -> Path:
    """Write a volume node to .nrrd/.nhdr/.nii/.nii.gz/.mha/.mhd with Slicer's storage node."""
    import slicer

    path = Path(path)
    if volume_file_suffix(path) is None:
        raise AIPortalError(
            f"Cannot save volume to {path}: unknown file type",
            f"use one of {', '.join(VOLUME_FILE_SUFFIXES)}",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)  # .nrrd gzip; .nii.gz is compressed by its name anyway
    with _vtk_messages() as messages:
        ok = storage.WriteData(node)
    if not ok or not path.exists():
        raise AIPortalError(
            f"Could not write volume {node.GetName()} to {path} ({_first_vtk_error(messages)})",
            "check that the folder is writable and the disk is not full",
        )
    return path


def _is_dicom_file(path: Path) -> bool:
    """True for Part 10 files (the 'DICM' marker after the 128-byte preamble)."""
    with path.open("rb") as stream:
        return stream.read(132)[128:] == b"DICM"


def _load_file(runtime: SlicerRuntime, path: Path, name: str | None) -> LoadedVolume:
    check_nifti_complete(path)  # ITK would read a truncated NIfTI as zeros
    with _vtk_messages() as messages:
        node = runtime.volumes.AddArchetypeVolume(
            str(path), name or _file_stem(path), _SINGLE_FILE | _AUTO_WINDOW_LEVEL
        )
    if node is None or node.GetImageData() is None:
        if node is not None:
            runtime.scene.RemoveNode(node)
        raise InputError(
            f"Cannot read image file {path} ({_first_vtk_error(messages)})",
            "check that the file is complete and is a NIfTI, NRRD or MetaImage volume",
        )
    warnings = []
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        warnings.append(f"{path} has {node.GetImageData().GetNumberOfScalarComponents()} components per voxel")
    return LoadedVolume(node=node, source=None, warnings=warnings, path=path)


def _apply_dicom_window(node, source: SourceSeries) -> None:
    """Show the series with the window the scanner stored, as Slicer's DICOM loader does."""
    header = source.headers[0]
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is None or width is None:
        return
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(_first_value(width), _first_value(center))


def _first_value(value) -> float:
    """The first of a multi-valued DICOM number (scanners may store several windows)."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def load_volume(
    path,
    runtime: SlicerRuntime | None = None,
    *,
    series_uid: str | None = None,
    name: str | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    nan_as: float | None = None,
    geometry: Geometry = "regular",
) -> LoadedVolume:
    """Load a DICOM folder or file, NIfTI, NRRD or MetaImage volume into the scene.

    ``geometry`` (DICOM only): "regular" resamples a gantry-tilted or unevenly spaced series onto a
    regular grid (the default), "acquired" keeps its slices as acquired (see :func:`read_dicom_series`).

    The node is placed under a study in the subject hierarchy (:func:`place_in_study`).
    DICOM volumes carry Slicer's ``DICOM.instanceUIDs`` attribute and their :class:`SourceSeries`.
    Voxels that are not numbers (NaN, ±Inf) are refused, or with ``nan_as`` set to that value with a warning.
    """
    loaded = _load_any(path, runtime, series_uid=series_uid, name=name, progress=progress, cancel=cancel,
                       geometry=geometry)
    try:
        nifti = volume_file_suffix(loaded.path) in (".nii", ".nii.gz") and loaded.path.is_file()
        warning = replace_non_finite(loaded.node, str(loaded.path), nan_as,
                                     _nifti_non_finite_ras(loaded.path) if nifti else None)
    except InputError:
        loaded.node.GetScene().RemoveNode(loaded.node)
        raise
    if warning:
        loaded.warnings.append(warning)
    from aiportal.io.finite import CHECKED_ATTRIBUTE

    loaded.node.SetAttribute(CHECKED_ATTRIBUTE, "1")  # the segment job's own check passes it
    return loaded


def replace_non_finite(node, label: str, nan_as: float | None, known_ras: np.ndarray | None = None) -> str | None:
    """Refuse a volume with NaN/Inf voxels (no model, statistic or threshold means anything on them), or set
    them to ``nan_as``; returns the warning that says how many were replaced, or None when there were none.
    ``known_ras``: positions (RAS) of voxels the file held as NaN/Inf but the reader already changed."""
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        return None
    values = numpy_support.vtk_to_numpy(scalars)  # a view: replaced in place
    bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if known_ras is not None and len(known_ras):
        i, j, k = (np.linalg.inv(ijk_to_ras_matrix(node)) @ np.c_[known_ras, np.ones(len(known_ras))].T)[:3]
        dims = image.GetDimensions()
        index = np.rint([i, j, k]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(dims)[:, None]), axis=0)
        flat = index[0] + dims[0] * (index[1] + dims[1] * index[2])  # voxel order: i fastest
        bad[flat[inside]] = True
    count = int(np.count_nonzero(bad.reshape(len(values), -1).any(axis=1)))
    if not count:
        return None
    if nan_as is None:
        raise InputError(f"{label} has {count} of {len(values)} voxels that are not numbers (NaN or Inf)",
                         "fix the file, or pass --nan-as VALUE (e.g. --nan-as -1024 for CT air) to replace them")
    values[bad] = nan_as
    scalars.Modified()
    image.Modified()
    return f"{count} of {len(values)} voxels of {label} were not numbers (NaN or Inf): set to {nan_as:g} (--nan-as)"


def _nifti_non_finite_ras(path: Path) -> np.ndarray | None:
    """RAS positions of a NIfTI's NaN/Inf voxels, read from the file: ITK's reader sets them to 0 silently."""
    try:
        import nibabel
        from nibabel.affines import apply_affine
    except ImportError:  # Slicer's own Python lacks nibabel: only the NaN/Inf voxels ITK kept are found there
        return None

    image = nibabel.load(str(path))
    if image.get_data_dtype().kind != "f":  # integers stored (CT, label maps): always numbers, not read twice
        return None
    data = np.asarray(image.dataobj)
    bad = ~np.isfinite(data)
    if not bad.any():
        return None
    bad = bad.reshape(*bad.shape[:3], -1).any(axis=-1) if bad.ndim > 3 else bad
    return apply_affine(image.affine, np.argwhere(bad))


def _load_any(
    path,
    runtime: SlicerRuntime | None,
    *,
    series_uid: str | None,
    name: str | None,
    progress: ProgressCallback,
    cancel: CancelToken | None,
    geometry: Geometry = "regular",
) -> LoadedVolume:
    if runtime is None:
        from aiportal.runtime import get_runtime

        runtime = get_runtime()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist", "check the path (a DICOM folder or an image file)")
    if path.is_file() and volume_file_suffix(path):
        progress(0.0, "Reading image file")
        loaded = _load_file(runtime, path, name)
        place_in_study(runtime, loaded.node, None, _file_stem(path))
        progress(1.0, "Image loaded")
        return loaded
    if path.is_file() and not _is_dicom_file(path):
        raise InputError(
            f"{path} is neither a DICOM file nor a volume file",
            f"pass a DICOM folder or file, or one of {', '.join(VOLUME_FILE_SUFFIXES)}",
        )
    image = read_dicom_series(path, series_uid, progress=progress, cancel=cancel, geometry=geometry)
    source = image.source
    assert source is not None  # the DICOM reader always keeps its source
    folder = path if path.is_dir() else path.parent
    node_name = (
        name
        or source.series_description
        or (f"Series {source.series_number}" if source.series_number is not None else folder.name)
    )
    node = volume_node_from_array(runtime.scene, image.array, image.ijk_to_ras, node_name)
    if source.instance_uids_text:
        node.SetAttribute("DICOM.instanceUIDs", source.instance_uids_text)
    if source.series_uid:
        node.SetAttribute("DICOM.SeriesInstanceUID", source.series_uid)
    if source.modality:  # registration's auto metric compares modalities (aiportal.register.auto)
        node.SetAttribute("DICOM.Modality", source.modality)
    _apply_dicom_window(node, source)
    place_in_study(runtime, node, source, folder.name)
    node.SetAttribute("aiportal.geometry", str(image.geometry.get("grid", "")))
    return LoadedVolume(node=node, source=source, warnings=list(image.warnings), path=path, geometry=image.geometry)
