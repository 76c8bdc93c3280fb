"""Segments as surface meshes (STL, OBJ) for 3D printing, planning and other software.

Files are written by Slicer's own ``ExportSegmentsClosedSurfaceRepresentationToFiles`` so they
match what Slicer's Segmentations module writes (LPS or RAS, OBJ with one material per segment).
The work happens on a temporary copy of the segmentation: the user's node keeps its conversion
parameters (smoothing) and representations. Every surface is checked to be watertight.

By default the surfaces are *volume-true* (:func:`volume_true_surface`): the isosurface of the
Gaussian-smoothed segment at the level whose enclosed volume equals the segment's voxel volume.
Slicer's own conversion (marching cubes + windowed-sinc smoothing) cuts every voxel corner and
shrinks thin structures: ribs at 3 mm lose 10-19 % unsmoothed and 40-95 % at smoothing 0.5, so a
printed or planned rib would be thinner than the segment it came from. An isosurface is closed and
never intersects itself, and matching its level keeps the volume within 0.1 %.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import slicer
import vtk
from scipy import ndimage
from vtkmodules.util import numpy_support

from aiportal.errors import AIPortalError, InputError
from aiportal.segmentation import image_scalars_kji, label_boxes, vtk_matrix_to_array
from aiportal.segmentation import segment_ids as all_segment_ids

_Logic = slicer.vtkSlicerSegmentationsModuleLogic
CLOSED_SURFACE = "Closed surface"
BINARY_LABELMAP = "Binary labelmap"
FILE_FORMATS = ("STL", "OBJ")
VOLUME_TOLERANCE = 1e-3  # relative: a surface's enclosed volume is matched to 0.1 % of the voxel volume


def surface_is_closed(polydata: vtk.vtkPolyData) -> bool:
    """True when every edge is shared by exactly two triangles (no holes, no non-manifold edges)."""
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return polydata.GetNumberOfCells() > 0 and edges.GetOutput().GetNumberOfCells() == 0


def surface_volume_mm3(polydata: vtk.vtkPolyData) -> float:
    """Enclosed volume of a closed triangle mesh (mm³ for meshes in mm)."""
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(polydata)
    mass = vtk.vtkMassProperties()
    mass.SetInputConnection(triangles.GetOutputPort())
    mass.Update()
    return float(mass.GetVolume())


def _mesh_arrays(polydata: vtk.vtkPolyData) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) and triangles (m, 3) of a triangle mesh."""
    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    triangles = numpy_support.vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return points, triangles


def _polydata(points: np.ndarray, triangles: np.ndarray) -> vtk.vtkPolyData:
    polydata = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    polydata.SetPoints(vtk_points)
    cells = vtk.vtkCellArray()
    connectivity = numpy_support.numpy_to_vtkIdTypeArray(triangles.astype(np.int64).ravel(), deep=True)
    cells.SetData(3, connectivity)
    polydata.SetPolys(cells)
    return polydata


def _signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, positive when its triangles face outwards."""
    a, b, c = (points[triangles[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def _offset_to_volume(points: np.ndarray, triangles: np.ndarray, target_mm3: float) -> np.ndarray:
    """Move the vertices along their normals by the one distance that gives ``target_mm3``.

    Used after decimation only, where the change is a fraction of a voxel: a uniform offset
    fixes volume to first order (dV = area x distance), two or three rounds converge.
    """
    points = points.copy()
    for _ in range(5):
        volume = _signed_volume(points, triangles)
        if abs(volume / target_mm3 - 1) < VOLUME_TOLERANCE / 10:
            break
        a, b, c = (points[triangles[:, k]] for k in range(3))
        face_normals = np.cross(b - a, c - a)  # length = 2 x area, outwards
        normals = np.zeros_like(points)
        for k in range(3):
            np.add.at(normals, triangles[:, k], face_normals)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-300
        area = 0.5 * np.linalg.norm(face_normals, axis=1).sum()
        points += normals * ((target_mm3 - volume) / area)
    return points


def volume_true_surface(
    mask_kji: np.ndarray, ijk_to_world: np.ndarray, smoothing: float = 0.5, decimation: float = 0.0
) -> vtk.vtkPolyData:
    """A closed, outward-facing triangle mesh (world mm) enclosing the mask's voxel volume.

    ``smoothing`` 0..1 is a Gaussian of 2 x smoothing voxels on each axis (Slicer's default 0.5 is
    one voxel); 0 keeps the voxel staircase. The level is found by a safeguarded secant search on
    the enclosed volume, which falls as the level rises. ``decimation`` is the fraction of triangles
    to remove (topology kept), followed by a sub-voxel offset that restores the volume.
    """
    boxes = ndimage.find_objects(mask_kji.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return vtk.vtkPolyData()
    sigma = 2.0 * max(float(smoothing), 0.0)
    pad = int(np.ceil(3 * sigma)) + 2  # the blurred field must reach ~0 inside the crop: a closed surface
    box = boxes[0]
    field = np.zeros(tuple(s.stop - s.start + 2 * pad for s in box), np.float32)
    field[tuple(slice(pad, -pad) for _ in box)] = mask_kji[box]
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma, mode="constant")
    origin_ijk = np.array([s.start - pad for s in box][::-1], dtype=np.float64)
    target = float(np.count_nonzero(mask_kji[box])) * abs(np.linalg.det(ijk_to_world[:3, :3]))

    image = vtk.vtkImageData()
    image.SetDimensions(*field.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(field.ravel(), deep=True))
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputData(image)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    contour.ComputeScalarsOff()

    def surface_at(level: float) -> tuple[np.ndarray, np.ndarray, float]:
        contour.SetValue(0, level)
        contour.Update()
        output = contour.GetOutput()
        if output.GetNumberOfCells() == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64), 0.0
        ijk, triangles = _mesh_arrays(output)
        world = (np.c_[ijk + origin_ijk, np.ones(len(ijk))] @ ijk_to_world.T)[:, :3]
        volume = _signed_volume(world, triangles)
        if volume < 0:  # a mirroring ijk → world matrix turns the triangles inside out
            triangles, volume = triangles[:, ::-1], -volume
        return world, triangles, volume

    peak = float(field.max())
    low, high = 1e-3 * peak, 0.999 * peak  # volume(low) > target > volume(high)
    level = 0.5 if sigma == 0 or peak > 0.5 else 0.5 * peak
    previous: tuple[float, float] | None = None
    for _ in range(30):
        points, triangles, volume = surface_at(level)
        if abs(volume / target - 1) < VOLUME_TOLERANCE:
            break
        if volume > target:
            low = level
        else:
            high = level
        guess = 0.5 * (low + high)
        if previous is not None and previous[1] != volume:  # secant step, kept inside the bracket
            secant = level + (target - volume) * (level - previous[0]) / (volume - previous[1])
            if low < secant < high:
                guess = secant
        previous, level = (level, volume), guess
    if decimation > 0 and len(triangles) > 100:
        decimate = vtk.vtkDecimatePro()
        decimate.SetInputData(_polydata(points, triangles))
        decimate.SetTargetReduction(min(float(decimation), 0.99))
        decimate.PreserveTopologyOn()
        decimate.BoundaryVertexDeletionOff()
        decimate.SplittingOff()
        decimate.Update()
        points, triangles = _mesh_arrays(decimate.GetOutput())
        points = _offset_to_volume(points, triangles, target)
    return _polydata(points, triangles)


def _volume_true_surfaces(segmentation, segment_ids: Sequence[str], smoothing: float, decimation: float) -> None:
    """Give each segment a volume-true closed surface, from its binary label map layer.

    One pass per shared layer finds every label's box, so each segment is contoured on its crop.
    """
    boxes_by_layer: dict[str, list] = {}
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        layer = segment.GetRepresentation(BINARY_LABELMAP)
        array = image_scalars_kji(layer)
        value = segment.GetLabelValue()
        key = layer.GetAddressAsString("vtkObject") if array is not None else ""
        if key and key not in boxes_by_layer:
            boxes_by_layer[key] = label_boxes(array)
        boxes = boxes_by_layer.get(key) or []
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        if box is None:
            segment.AddRepresentation(CLOSED_SURFACE, vtk.vtkPolyData())
            continue
        matrix = vtk.vtkMatrix4x4()
        layer.GetImageToWorldMatrix(matrix)
        ijk_to_world = vtk_matrix_to_array(matrix)
        first_ijk = np.array(layer.GetExtent()[0::2]) + [s.start for s in box][::-1]
        ijk_to_world[:3, 3] += ijk_to_world[:3, :3] @ first_ijk
        segment.AddRepresentation(
            CLOSED_SURFACE, volume_true_surface(array[box] == value, ijk_to_world, smoothing, decimation)
        )


def safe_file_stem(name: str) -> str:
    """A segment name as a file name on every system: letters, digits, '.', '_', '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem or "segment"


def _unique(stem: str, taken: set[str]) -> str:
    candidate, number = stem, 2
    while candidate.lower() in taken:  # case-insensitive: macOS and Windows file systems
        candidate, number = f"{stem}_{number}", number + 1
    taken.add(candidate.lower())
    return candidate


def _check_folder(out_dir: Path) -> None:
    if not out_dir.is_dir():
        raise InputError(f"Output folder {out_dir} does not exist", "create it or choose another folder")
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"Output folder {out_dir} is not writable", "choose a folder you can write to")


def _surfaces_made_with(segmentation, smoothing: float, decimation: float) -> bool:
    """Whether the segmentation already holds closed surfaces made with these factors."""
    if not segmentation.ContainsRepresentation(CLOSED_SURFACE):
        return False
    try:
        made = (float(segmentation.GetConversionParameter("Smoothing factor") or "nan"),
                float(segmentation.GetConversionParameter("Decimation factor") or "0"))
    except ValueError:
        return False
    return made == (smoothing, decimation)


def export_surfaces(
    segmentation_node,
    out_dir,
    *,
    file_format: Literal["STL", "OBJ"] = "STL",
    merged: bool = False,
    coordinates: Literal["LPS", "RAS"] = "LPS",
    smoothing: float = 0.5,
    decimation: float = 0.0,
    segment_ids: Sequence[str] | None = None,
    volume_true: bool = True,
) -> list[Path]:
    """Write closed surfaces of the segments (all by default) and return the files written.

    One file per segment named after it (``liver.stl``), or with ``merged`` one file named after
    the segmentation. OBJ files come with their ``.mtl`` (segment colours) next to them.
    ``smoothing`` (0..1) and ``decimation`` (fraction of triangles removed) work as Slicer's factors.
    ``volume_true`` (default) makes surfaces whose enclosed volume equals the segment's voxel volume
    (:func:`volume_true_surface`); ``False`` writes Slicer's own conversion, as shown in its 3D view.
    LPS is what most STL consumers (and Slicer's default) expect; RAS flips x and y.

    Raises :class:`InputError` for a bad request, and :class:`AIPortalError` after writing when a
    surface is not watertight (lower the decimation), so that it is never used unknowingly.
    """
    writer_format = file_format.upper()
    if writer_format not in FILE_FORMATS:
        raise InputError(f"Unknown surface file format {file_format!r}", f"use one of: {', '.join(FILE_FORMATS)}")
    if coordinates not in ("LPS", "RAS"):
        raise InputError(f"Unknown coordinate system {coordinates!r}", "use LPS or RAS")
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    known = all_segment_ids(segmentation_node)
    if not known:
        raise InputError(f"Segmentation {segmentation_node.GetName()} has no segments", "segment the image first")
    wanted = list(segment_ids) if segment_ids is not None else known
    for segment_id in wanted:
        if segment_id not in known:
            raise InputError(
                f"Segment {segment_id!r} is not in {segmentation_node.GetName()}", f"use one of: {', '.join(known)}"
            )
    if writer_format == "OBJ" and "DISPLAY" not in os.environ:
        # Slicer's OBJ export goes through vtkOBJExporter, which opens a render window: without an X
        # server, use EGL (Mesa's software renderer) instead of failing on the X connection first.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

    copy = slicer.vtkMRMLSegmentationNode()
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    segmentation = copy.GetSegmentation()
    if volume_true and segmentation.GetSourceRepresentationName() == BINARY_LABELMAP:
        for segment_id in known:
            if segment_id not in wanted:  # the copy only needs what is written
                segmentation.RemoveSegment(segment_id)
        segmentation.RemoveRepresentation(CLOSED_SURFACE)
        _volume_true_surfaces(segmentation, wanted, smoothing, decimation)
    elif not _surfaces_made_with(segmentation, smoothing, decimation):  # else reuse the ones shown in 3D
        segmentation.RemoveRepresentation(CLOSED_SURFACE)
        segmentation.SetConversionParameter("Smoothing factor", str(smoothing))
        segmentation.SetConversionParameter("Decimation factor", str(decimation))
        if not segmentation.CreateRepresentation(CLOSED_SURFACE):
            raise AIPortalError(f"Slicer could not make surfaces of {segmentation_node.GetName()}")
    empty = [
        segmentation.GetSegment(s).GetName()
        for s in wanted
        if not segmentation.GetSegment(s).GetRepresentation(CLOSED_SURFACE).GetNumberOfCells()
    ]
    if empty:
        raise InputError(f"Segments {', '.join(empty)} are empty: no surface to export", "leave them out (segment_ids)")

    # Slicer names a merged file after the node: one merged export per file names each file.
    taken: set[str] = set()
    if merged:
        jobs = [(_unique(safe_file_stem(segmentation_node.GetName() or "segmentation"), taken), wanted)]
    else:
        jobs = [(_unique(safe_file_stem(segmentation.GetSegment(s).GetName()), taken), [s]) for s in wanted]
    suffix = "." + writer_format.lower()
    written: list[Path] = []
    open_surfaces = []
    for stem, ids in jobs:
        copy.SetName(stem)
        array = vtk.vtkStringArray()
        for segment_id in ids:
            array.InsertNextValue(segment_id)
        path = out_dir / (stem + suffix)
        _Logic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(out_dir), copy, array, writer_format, coordinates == "LPS", 1.0, True
        )
        if not path.is_file():  # Slicer reports success even when its writer failed
            raise AIPortalError(f"Could not write {path}", "check the free disk space and the folder's permissions")
        written.append(path)
        if writer_format == "OBJ":
            written.append(path.with_suffix(".mtl"))
        open_surfaces += [
            segmentation.GetSegment(s).GetName()
            for s in ids
            if not surface_is_closed(segmentation.GetSegment(s).GetRepresentation(CLOSED_SURFACE))
        ]
    if open_surfaces:
        raise AIPortalError(
            f"Surfaces of {', '.join(open_surfaces)} are not watertight (files written in {out_dir})",
            "export again with a lower decimation factor",
        )
    return written
